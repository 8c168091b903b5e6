#!/usr/bin/env bash
# Every measure a bundled-model candidate is judged by (issue 25's targets, and issue 24's texture
# figures on it), on one CPU thread, into out/candidates/NAME/:
#
#   bash scripts/judge_candidate.sh checkpoints/v3a          # about 35 min on one thread
#   SAMPLING="--top-p 0.85 --no-top-p-time" NAME=v3a-spared bash scripts/judge_candidate.sh checkpoints/v3a
#
# SAMPLING (default "--top-p 0.85") is how every sample here is drawn: the judge passes it to
# generate and the texture runs to bench_texture, so it may hold only --top-p and --[no-]top-p-time.
#
#   test.txt        `evaluate` on the 98 test pieces of data/music21-prepared
#   robustness.txt  validation NLL per note as is, transposed, at other tempi and played (40 pieces)
#   judge/          the judge: 48 samples of 120 s from nothing and after the Quickstart primer,
#                   guards off, drawn with SAMPLING; also the first 53 test pieces (summary.md)
#   synthetic.json  bench_texture on the two synthetic pedalled performances, plain and
#                   texture-keeping, 8,192 tokens, seeds 0-3
#   real.json       the same on the Quickstart chorale and the madrigal
#   perf-test.txt   `evaluate` on two real MAESTRO performances no candidate trained on
#   performances.json  bench_texture on 40-s primers cut from them (6 and 16 notes/s)
# Needs data/music21-prepared, data/music21-midi (scripts/train_bundled_model.sh makes both) and
# data/m21-prepared (the Bach reference for memorisation); the performances and their primers come from
# scripts/make_package_performances.py (run here). Steps already done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CKPT=${1:?usage: judge_candidate.sh CHECKPOINT_DIR}
NAME=${NAME:-$(echo "${CKPT%/}" | sed 's|^checkpoints/||; s|/|-|g')}  # checkpoints/v3a/best -> v3a-best
OUT=out/candidates/$NAME
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
SAMPLING=${SAMPLING:---top-p 0.85}
read -r -a BENCH <<< "$SAMPLING"  # bench_texture takes the same --top-p and --[no-]top-p-time
step() {  # step FILE COMMAND...: run COMMAND into FILE unless FILE exists
  local file=$1; shift
  [ -s "$file" ] && return 0
  echo "$(date +%H:%M:%S) $NAME: $file"
  "$@" > "$file.tmp" 2>&1 && mv "$file.tmp" "$file"
}
step "$OUT/test.txt" "$PY" -m perceiver_ar_music evaluate --checkpoint "$CKPT" --data data/music21-prepared
"$PY" scripts/make_package_performances.py --out data/package-maestro --primers out/perf-primers 2>/dev/null
"$PY" -m perceiver_ar_music prepare --data data/package-maestro --out data/package-maestro-prepared --no-progress >/dev/null
step "$OUT/perf-test.txt" "$PY" -m perceiver_ar_music evaluate --checkpoint "$CKPT" --data data/package-maestro-prepared
step "$OUT/performances.log" "$PY" scripts/bench_texture.py --checkpoint "$CKPT" --threads 1 --length 8192 \
  --seeds 0 1 2 3 --primer out/perf-primers/maestro1-30s-70s.mid --primer out/perf-primers/maestro3-30s-70s.mid \
  --reference data/m21-prepared --json "$OUT/performances.json" "${BENCH[@]}"
step "$OUT/robustness.txt" "$PY" scripts/eval_robustness.py --data data/music21-prepared --checkpoint "$CKPT" \
  --threads 1 --max-pieces 40
step "$OUT/synthetic.log" "$PY" scripts/bench_texture.py --checkpoint "$CKPT" --threads 1 --length 8192 \
  --seeds 0 1 2 3 --only 2 3 --reference data/m21-prepared --json "$OUT/synthetic.json" "${BENCH[@]}"
step "$OUT/judge.log" "$PY" scripts/judge_model.py --checkpoint "$CKPT" --data data/music21-prepared \
  --midi data/music21-midi --out "$OUT/judge" --seconds 120 --samples 16 --seed 0 1 2 --sampling "$SAMPLING"
step "$OUT/real.log" "$PY" scripts/bench_texture.py --checkpoint "$CKPT" --threads 1 --length 8192 \
  --seeds 0 1 2 3 --only 0 1 --reference data/m21-prepared --json "$OUT/real.json" "${BENCH[@]}"
echo "$(date +%H:%M:%S) $NAME: done, $OUT"
