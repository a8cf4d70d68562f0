#!/usr/bin/env bash
# Runs a test binary under compute-sanitizer's memcheck; any memory error fails the run.
#   run_memcheck.sh TEST_BINARY [ARGS...]
# compute-sanitizer is looked up on PATH, then in $CUDA_HOME/bin and /usr/local/cuda/bin; a
# machine without it fails (the check is never skipped).
set -u
sanitizer=$(command -v compute-sanitizer || true)
for dir in "${CUDA_HOME:-}/bin" /usr/local/cuda/bin; do
  [ -n "$sanitizer" ] && break
  [ -x "$dir/compute-sanitizer" ] && sanitizer="$dir/compute-sanitizer"
done
if [ -z "$sanitizer" ]; then
  echo "run_memcheck.sh: compute-sanitizer not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)" >&2
  exit 1
fi
exec "$sanitizer" --tool memcheck --error-exitcode 86 --leak-check no "$@"
