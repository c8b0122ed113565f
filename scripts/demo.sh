#!/usr/bin/env bash
# Installs what is missing, builds funnel (Release), generates a synthetic
# shop and runs the end-to-end demo on it. Arguments are passed to the demo,
# e.g. scripts/demo.sh --items 20000 --users 5000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target demo_shop funnel-gen-shop
./build/examples/demo_shop --out build/demo-shop "$@"
