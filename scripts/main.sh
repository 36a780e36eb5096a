#!/usr/bin/env bash
# Install everything, then run the main job: the benchmark suite's quick run (writes
# out/bench/RESULTS.md, JSON and plots; the committed full run in benchmarks/ stays as
# it is) and a WGAN-GP training run on the bundled handwritten digits (writes
# out/digits/samples.png, real.png, losses.png, metrics.json, generator.pt).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh .venv
. .venv/bin/activate
python benchmarks/run.py --quick --out out/bench
python -m fastgan train --dataset digits --out out/digits "$@"
