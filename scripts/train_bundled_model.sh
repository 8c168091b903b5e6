#!/usr/bin/env bash
# Reproduce the bundled default model (checkpoints/default/) from scratch, offline, on a CPU.
#
#   bash scripts/train_bundled_model.sh          # about 80 minutes on 2 CPU cores (8 of them: the corpus)
#
# 1. music21's public-domain corpus -> MIDI (data/music21-midi), 2. prepare (data/music21-prepared),
# 3. train a 4.1M-parameter Perceiver AR (context 1024, 256 latents), 4. copy its best checkpoint
# (lowest validation loss) to checkpoints/default/. The model card there records the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-1200}            # first run: warmup + cosine over 1,200 steps
RESUMES=${RESUMES:-"3200 3700 5700"} # then resumed with longer schedules: to 3,200, 3,700, then 5,700 steps

"$PY" scripts/make_music21_corpus.py --out data/music21-midi --workers 2
"$PY" -m perceiver_ar_music prepare --data data/music21-midi --out data/music21-prepared --no-progress
"$PY" -m perceiver_ar_music train --data data/music21-prepared --out checkpoints --name bundled-run \
  --preset tiny --max-seq-len 1024 --num-latents 256 --dim 256 --depth 4 --heads 4 --dim-head 64 \
  --cross-attn-dropout 0.25 --dropout 0.1 --batch-size 8 --lr 6e-4 --warmup 100 \
  --max-steps "$STEPS" --eval-every 150 --eval-windows 96 --save-every 150 --seed 0 --no-progress
for total in $RESUMES; do
  "$PY" -m perceiver_ar_music train --resume checkpoints/bundled-run --max-steps "$total" --no-progress
done
rm -rf checkpoints/default.new
mkdir -p checkpoints/default.new
cp checkpoints/bundled-run/best/{config.json,tokenizer.json,model.safetensors,meta.json} checkpoints/default.new/
[ -f checkpoints/default/README.md ] && cp checkpoints/default/README.md checkpoints/default.new/
rm -rf checkpoints/default && mv checkpoints/default.new checkpoints/default
echo "bundled model written to checkpoints/default/"
