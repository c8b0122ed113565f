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

# Every translation unit in the build (tests/consumer builds against an install,
# not here). The library's own sources get every check of .clang-tidy; the
# tools, examples, tests and benchmarks every check but the path-sensitive
# static analyzer (clang-analyzer-*), which doubles clang-tidy's time per file
# and whose findings there would be in code the library does not ship.
mapfile -t library < <(git ls-files 'src/*.cpp')
mapfile -t others < <(git ls-files 'tools/*.cpp' 'examples/*.cpp' 'benchmarks/*.cpp' 'tests/*.cpp' |
  grep -v '^tests/consumer/')
# A translation unit the build leaves out (bench_ivf_search without hnswlib,
# from `install-deps.sh --bench`) has no compile command: clang-tidy would
# guess one without include paths or -std and report errors that are not in
# the code. Those are skipped, by name.
built=()
for f in "${others[@]}"; do
  if grep -qF "\"file\": \"$(pwd -P)/$f\"" "$build/compile_commands.json"; then
    built+=("$f")
  else
    echo "lint: $f is not in this build (an optional dependency is missing): not checked"
  fi
done
others=("${built[@]}")
echo "lint: clang-tidy on ${#library[@]} library and ${#others[@]} other translation units"
{
  printf 'L %s\n' "${library[@]}"
  printf 'O %s\n' "${others[@]}"
} | xargs -P "$(nproc)" -L 1 sh -c '
  set -f
  if [ "$0" = L ]; then checks=; else checks=--checks=-clang-analyzer-*; fi
  exec clang-tidy -p "'"$build"'" --quiet $checks --extra-arg=-Wno-unknown-warning-option "$1"'
echo "lint: clean"
