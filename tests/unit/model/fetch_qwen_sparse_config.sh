#!/usr/bin/env bash
# Fetches Qwen's shipped sparse_attention_config.json of Qwen2.5-7B-Instruct-1M (a copy is
# minference/configs/Qwen2.5_7B_Instruct_1M.json in the PyPI source distribution of
# minference 0.1.6.0) into ${MILLIPEDE_CACHE_DIR:-~/.cache/millipede} and prints its path on the
# last line. Idempotent: a verified cached copy is reused.
#
# minference is published on PyPI as a source distribution only, and building its metadata
# needs torch. `pip download --no-clean --no-build-isolation` unpacks the archive into TMPDIR
# before that step fails; the file is taken from there and verified by its sha256.
set -euo pipefail
version=0.1.6.0
member=minference/configs/Qwen2.5_7B_Instruct_1M.json
sha256=97d96c888705ad76b48e6291fa97054cc05331d937a46ab66a9fffb91823990a
cache=${MILLIPEDE_CACHE_DIR:-$HOME/.cache/millipede}
dir="$cache/minference-$version"
file="$dir/Qwen2.5_7B_Instruct_1M.sparse_attention_config.json"
root=$(cd "$(dirname "$0")/../../.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON=$root/.venv/bin/python; else PYTHON=python3; fi
fi

verify() { [ -f "$1" ] && echo "$sha256  $1" | sha256sum --check --status; }

if ! verify "$file"; then
  mkdir -p "$dir"
  tmp=$(mktemp -d "$dir/download.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "== pip download minference==$version (source distribution)" >&2
  TMPDIR="$tmp" "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-clean --no-build-isolation --dest "$tmp/dest" "minference==$version" \
    >"$tmp/pip.log" 2>&1 || true
  found=""
  for candidate in "$tmp"/pip-*/minference*/"$member" "$tmp"/dest/minference-"$version"*/"$member"; do
    if verify "$candidate"; then found=$candidate; break; fi
  done
  if [ -z "$found" ] && ls "$tmp"/dest/minference-"$version".tar.gz >/dev/null 2>&1; then
    tar -xzf "$tmp"/dest/minference-"$version".tar.gz -C "$tmp/dest"
    for candidate in "$tmp"/dest/minference-"$version"/"$member"; do
      if verify "$candidate"; then found=$candidate; break; fi
    done
  fi
  if [ -z "$found" ]; then
    echo "fetch_qwen_sparse_config.sh: no $member with sha256 $sha256 in minference==$version" >&2
    tail -n 20 "$tmp/pip.log" >&2 || true
    exit 1
  fi
  cp "$found" "$tmp/out.json"
  mv "$tmp/out.json" "$file"
fi
echo "$file"
