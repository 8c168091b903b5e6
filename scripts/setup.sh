#!/usr/bin/env bash
# Set up perceiver-ar-music in ./.venv: system library (FluidSynth), PyTorch, the package and its
# test tools. Safe to re-run; fast when everything is already there.
#
#   bash scripts/setup.sh            # CPU or CUDA machine, picks a PyTorch build
#   TORCH_SPEC='torch==2.5.1' bash scripts/setup.sh   # choose the PyTorch build yourself
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup] $*"; }

# 1. FluidSynth's shared library, for rendering WAV audio (optional at run time).
if ! ldconfig -p 2>/dev/null | grep -q 'libfluidsynth\.so'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing libfluidsynth3 (Debian package)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfluidsynth3 >/dev/null
  else
    log "NOTE: FluidSynth's library is missing, so WAV rendering is off. Install it with"
    log "      'sudo apt-get install libfluidsynth3' (Debian/Ubuntu) or 'brew install fluid-synth' (macOS)."
  fi
fi

# 1b. The piano the takes (and the studio's page) are played with: the best free GM soundfont the
# Debian registry offers (docs/benchmarks.md, "Soundfonts"); rendering prefers it. Without root,
# the bundled TimGM6mb (inside pretty_midi) is used.
SOUNDFONT_PACKAGE=${SOUNDFONT_PACKAGE:-fluid-soundfont-gm}
SOUNDFONT_FILE=${SOUNDFONT_FILE:-/usr/share/sounds/sf2/FluidR3_GM.sf2}
if [ ! -f "$SOUNDFONT_FILE" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing the piano soundfont ($SOUNDFONT_PACKAGE)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$SOUNDFONT_PACKAGE" >/dev/null \
      || log "NOTE: could not install $SOUNDFONT_PACKAGE: audio uses the small bundled TimGM6mb"
  else
    log "NOTE: for a better piano, 'sudo apt-get install $SOUNDFONT_PACKAGE' (audio uses the small bundled TimGM6mb)"
  fi
fi

# 2. A virtual environment.
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# 3. PyTorch: keep an installed one; otherwise a CPU-sized build unless a CUDA GPU is present.
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if [ -z "${TORCH_SPEC:-}" ]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
      TORCH_SPEC='torch>=2.4'
    else
      TORCH_SPEC='torch==2.13.0'
    fi
  fi
  log "installing $TORCH_SPEC"
  "${PIP[@]}" install "$TORCH_SPEC"
fi

# 4. The package (editable: the tokenizer presets and bundled model are read from this checkout).
log "installing perceiver-ar-music and its test tools"
"${PIP[@]}" install -e '.[test]'
log "ready: .venv/bin/perceiver-music --help"
