#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, then
#   1. a Release build with warnings as errors, all tests (incl. examples and
#      the find_package consumer);
#   2. the same tests under AddressSanitizer + UndefinedBehaviorSanitizer;
#   3. the tests under ThreadSanitizer;
#   4. clang-format and clang-tidy over the sources.
# Each step can be run alone: scripts/test.sh release|asan|tsan|lint.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(release asan tsan lint)

bash scripts/install-deps.sh

for step in "${steps[@]}"; do
  echo "=== funnel test step: $step ==="
  case "$step" in
    release)
      cmake --preset release
      cmake --build --preset release -j "$jobs"
      ctest --preset release -j "$jobs"
      ;;
    asan)
      cmake --preset asan
      cmake --build --preset asan -j "$jobs"
      ctest --preset asan -j "$jobs"
      ;;
    tsan)
      cmake --preset tsan
      cmake --build --preset tsan -j "$jobs"
      ctest --preset tsan -j "$jobs"
      ;;
    lint)
      bash scripts/lint.sh
      ;;
    *)
      echo "unknown step '$step' (expected release, asan, tsan or lint)" >&2
      exit 2
      ;;
  esac
done
echo "=== funnel: all test steps passed (${steps[*]}) ==="
