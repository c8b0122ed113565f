#!/usr/bin/env bash
# clang-format (check only) and clang-tidy over funnel's own sources.
# Needs a configured build with compile_commands.json (the release preset).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
[ -f "$build/compile_commands.json" ] || cmake --preset release >/dev/null

mapfile -t files < <(git ls-files '*.cpp' '*.hpp')
echo "lint: clang-format on ${#files[@]} files"
clang-format --dry-run --Werror "${files[@]}"

# Every translation unit in the build (tests/consumer builds against an install, not here).
mapfile -t units < <(git ls-files 'src/*.cpp' 'tools/*.cpp' 'examples/*.cpp' 'benchmarks/*.cpp' 'tests/*.cpp' |
  grep -v '^tests/consumer/')
echo "lint: clang-tidy on ${#units[@]} translation units"
printf '%s\n' "${units[@]}" | xargs -P "$(nproc)" -n 4 clang-tidy -p "$build" --quiet --extra-arg=-Wno-unknown-warning-option
echo "lint: clean"
