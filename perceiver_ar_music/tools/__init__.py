"""The logic behind the research and maintenance scripts in scripts/ (judging a model, robustness,
the corpora, the example primer, long-continuation benchmarks, the bundled recipe), here so that
it is tested and importable; the scripts are thin entry points. These tools read the checkout
(examples/, checkpoints/, scripts/): `REPO` is its root."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
