#!/usr/bin/env bash
# The bundled recipe's regularisation, measured: short runs of the bundled shape (run A of
# scripts/train_bundled_model.sh) that differ in one setting each, two at a time on one CPU thread
# each, then their validation loss side by side.
#
#   bash scripts/ablate_bundled_recipe.sh          # about 100 min on the 2-core development CPU
#
# Runs (each one planned schedule of STEPS steps, same seed, same data):
#   base    the bundled recipe: prefix dropout 0.25, transposition +-3, time stretch 0.95-1.05
#   pd0     prefix dropout 0 (every prefix position attended)
#   pd50    prefix dropout 0.5
#   noaug   no transposition and no time stretch
#   wide    transposition +-6, time stretch 0.90-1.10
#   notime  transposition +-3, no time stretch
#   w25     time stretch 0.75-1.25 (run W of the model card, at this length)
#   w25half time stretch 0.75-1.25 on half of the windows only (--stretch-windows 0.5)
#   base-s1, w25half-s1   the same two with seed 1 (another draw of windows and weights): the noise
# then what each costs and buys: validation NLL per note as the pieces are, transposed, and
# slower and faster (scripts/eval_robustness.py), beside the bundled model.
# Every run keeps the velocity augmentation (chosen by listening, see the model card) and dropout 0.
# Needs data/music21-prepared (scripts/train_bundled_model.sh makes it). Runs go to
# checkpoints/ablate-*; re-running resumes unfinished ones and skips finished ones.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-1200}
COMMON=(--data data/music21-prepared --out checkpoints --preset tiny --max-seq-len 1024 --num-latents 256
        --dim 256 --depth 4 --heads 4 --dim-head 64 --dropout 0.0
        --velocity-windows 0.5 --velocity-shift 32 --velocity-noise 12
        --batch-size 8 --lr 6e-4 --warmup 150 --eval-every 150 --eval-windows 128 --save-every 150
        --seed 0 --no-progress --max-steps "$STEPS")
declare -A RUNS=(
  [base]="--cross-attn-dropout 0.25 --max-transpose 3 --stretch 0.05"
  [pd0]="--cross-attn-dropout 0.0 --max-transpose 3 --stretch 0.05"
  [pd50]="--cross-attn-dropout 0.5 --max-transpose 3 --stretch 0.05"
  [noaug]="--cross-attn-dropout 0.25 --max-transpose 0 --stretch 0"
  [wide]="--cross-attn-dropout 0.25 --max-transpose 6 --stretch 0.10"
  [notime]="--cross-attn-dropout 0.25 --max-transpose 3 --stretch 0"
  [w25]="--cross-attn-dropout 0.25 --max-transpose 3 --stretch 0.25"
  [w25half]="--cross-attn-dropout 0.25 --max-transpose 3 --stretch 0.25 --stretch-windows 0.5"
  [base-s1]="--cross-attn-dropout 0.25 --max-transpose 3 --stretch 0.05 --seed 1"
  [w25half-s1]="--cross-attn-dropout 0.25 --max-transpose 3 --stretch 0.25 --stretch-windows 0.5 --seed 1"
)
ORDER=(base pd0 pd50 noaug wide notime w25 w25half base-s1 w25half-s1)

run() {  # NAME: train (or resume) one run, one thread
  local name=ablate-$1
  if [ -f "checkpoints/$name/best/meta.json" ] && grep -q "\"step\": $STEPS" "checkpoints/$name/metrics.jsonl" 2>/dev/null; then
    return 0  # finished (its log kept)
  fi
  if ls -d "checkpoints/$name"/ckpt-* >/dev/null 2>&1; then
    OMP_NUM_THREADS=1 nice "$PY" -m perceiver_ar_music train --resume "checkpoints/$name" --no-progress
  else
    rm -rf "checkpoints/$name"
    # shellcheck disable=SC2086  # the run's arguments are split on purpose
    OMP_NUM_THREADS=1 nice "$PY" -m perceiver_ar_music train "${COMMON[@]}" --name "$name" ${RUNS[$1]}
  fi > "checkpoints/$name.log" 2>&1
}

for ((i = 0; i < ${#ORDER[@]}; i += 2)); do  # two at a time: one per core
  run "${ORDER[$i]}" &
  [ $((i + 1)) -lt ${#ORDER[@]} ] && run "${ORDER[$((i + 1))]}" &
  wait
done

"$PY" - "$STEPS" "${ORDER[@]}" <<'EOF'
import json, sys
steps, names = int(sys.argv[1]), sys.argv[2:]
print(f"run | validation nats/token at steps 600 / 900 / {steps} | best | s/step (wall, with evaluations)")
for name in names:
    rows = [json.loads(line) for line in open(f"checkpoints/ablate-{name}/metrics.jsonl")]
    val = {r["step"]: r["val_nats"] for r in rows if "val_nats" in r}
    train = [r for r in rows if "elapsed_s" in r]
    rate = (train[-1]["elapsed_s"] - train[0]["elapsed_s"]) / (train[-1]["step"] - train[0]["step"])
    at = " / ".join(f"{val[s]:.4f}" if s in val else "-" for s in (600, 900, steps))
    print(f"{name} | {at} | {min(val.values()):.4f} | {rate:.2f}")
EOF

OMP_NUM_THREADS=2 "$PY" scripts/eval_robustness.py --data data/music21-prepared --threads 2 --checkpoint \
  checkpoints/default checkpoints/ablate-base checkpoints/ablate-noaug checkpoints/ablate-notime checkpoints/ablate-wide \
  checkpoints/ablate-w25 checkpoints/ablate-w25half
