#!/usr/bin/env bash
# Installs every package funnel needs to build and test, from Debian's
# repositories; with --bench also what the benchmarks compare against and
# read (hnswlib, Fashion-MNIST, gnuplot, PyTorch, Node.js for ONNX Runtime).
# Installs only what is missing; safe to run twice.
set -euo pipefail

bench=0
for arg in "$@"; do
  case "$arg" in
    --bench) bench=1 ;;
    *) echo "usage: install-deps.sh [--bench]" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential cmake ninja-build pkg-config git
  libeigen3-dev libdnnl-dev libfaiss-dev libopenblas-dev
  ocl-icd-opencl-dev opencl-c-headers   # dnnl's CMake config looks for OpenCL
  nlohmann-json3-dev libutf8proc-dev libsentencepiece-dev
  catch2 libbenchmark-dev
  clang-format clang-tidy
)
if [ "$bench" -eq 1 ]; then
  packages+=(
    libhnswlib-dev dataset-fashion-mnist gnuplot-nox
    python3 python3-torch python3-numpy python3-sentencepiece
  )
  # Node.js may come from elsewhere (NodeSource bundles npm in its nodejs,
  # which conflicts with Debian's npm): only install Debian's when absent.
  if ! command -v npm > /dev/null; then packages+=(nodejs npm); fi
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
