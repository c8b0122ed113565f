#!/usr/bin/env bash
# Installs every package funnel needs to build, test and benchmark, from
# Debian's repositories. Installs only what is missing; safe to run twice.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libeigen3-dev libdnnl-dev libfaiss-dev libopenblas-dev
  ocl-icd-opencl-dev opencl-c-headers   # dnnl's CMake config looks for OpenCL
  nlohmann-json3-dev libutf8proc-dev
  catch2 libbenchmark-dev
  clang-format clang-tidy
)

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
