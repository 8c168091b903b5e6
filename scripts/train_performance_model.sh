#!/usr/bin/env bash
# Teach a bundled-shape model real piano performances: ten MAESTRO performances that ship in
# miditok's source distribution on PyPI (scripts/make_package_performances.py), mixed half and
# half with the bundled model's own music21 corpus so that it keeps what it knows.
#
#   bash scripts/train_performance_model.sh                          # from v2, the shipped model
#   BASE=checkpoints/candidate-v3 NAME=v3p-from-v3 bash scripts/train_performance_model.sh
#
# 1. the ten performances (7 train, Maestro_10 validation, Maestro_1 and Maestro_3 test), prepared;
# 2. the music21 corpus prepared as for the bundled model (scripts/train_bundled_model.sh makes it);
# 3. `train --init-from BASE`: BASE's shape and tokenizer; v2's regularisation (prefix dropout 0.25,
#    transposition +-3, half of the windows with other velocities) and half of the windows
#    time-stretched by 0.75-1.25; half of the windows from the corpus (--mix-share 0.5); AdamW at
#    3e-4, warmup 200, cosine to 10%, STEPS steps, no early stopping: one planned schedule. The
#    validation loss (on Maestro_10) picks best/.
# Re-running after an interruption resumes the run folder on the same schedule.
# MAESTRO is CC BY-NC-SA 4.0: a model trained on it is for non-commercial use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-4000}
THREADS=${THREADS:-1}
NAME=${NAME:-v3p}
BASE=${BASE:-checkpoints/v2-base}
V2_COMMIT=04d84b3

"$PY" scripts/make_package_performances.py --out data/package-maestro
"$PY" -m perceiver_ar_music prepare --data data/package-maestro --out data/package-maestro-prepared --no-progress
if [ ! -f data/music21-prepared/manifest.json ]; then
  echo "data/music21-prepared is missing: run scripts/train_bundled_model.sh's corpus steps first" >&2
  exit 2
fi
if [ "$BASE" = checkpoints/v2-base ] && [ ! -f "$BASE/model.safetensors" ]; then
  mkdir -p "$BASE"
  for f in config.json tokenizer.json model.safetensors meta.json; do
    git show "$V2_COMMIT:checkpoints/default/$f" > "$BASE/$f.tmp" && mv "$BASE/$f.tmp" "$BASE/$f"
  done
fi

ARGS=(--init-from "$BASE" --data data/package-maestro-prepared --mix-data data/music21-prepared --mix-share 0.5
      --out checkpoints --name "$NAME"
      --cross-attn-dropout 0.25 --dropout 0.0 --max-transpose 3 --stretch 0.25 --stretch-windows 0.5
      --velocity-windows 0.5 --velocity-shift 32 --velocity-noise 12
      --batch-size 8 --lr 3e-4 --warmup 200 --min-lr-ratio 0.1 --max-steps "$STEPS"
      --eval-every 250 --eval-windows 128 --save-every 250 --patience 0 --seed 0 --no-progress)
if ls -d "checkpoints/$NAME"/ckpt-* >/dev/null 2>&1; then
  OMP_NUM_THREADS=$THREADS nice "$PY" -m perceiver_ar_music train --resume "checkpoints/$NAME" --threads "$THREADS" --no-progress >> "checkpoints/$NAME.log" 2>&1
else
  rm -rf "checkpoints/$NAME"
  OMP_NUM_THREADS=$THREADS nice "$PY" -m perceiver_ar_music train "${ARGS[@]}" --threads "$THREADS" >> "checkpoints/$NAME.log" 2>&1
fi
echo "$NAME: best validation $("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['best_val_nats'])" "checkpoints/$NAME/best/meta.json") nats/token"
