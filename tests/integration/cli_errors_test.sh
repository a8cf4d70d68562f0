#!/usr/bin/env bash
# Every bad input to `millipede run` / `convert-gguf` / the cluster commands must end with a non-zero exit code (not a
# signal) and a message on stderr that names the problem.
#   cli_errors_test.sh MILLIPEDE_BIN FIXTURE_MODEL_DIR
set -u
bin=$1
good=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
passed=0

# expect_error NAME SUBSTRING -- ARGS...
expect_error() {
  local name=$1 want=$2
  shift 3
  local out rc
  out=$("$bin" "$@" 2>&1 </dev/null)
  rc=$?
  if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ]; then
    echo "FAIL $name: exit code $rc (want a non-zero error exit, not a signal)"; echo "$out"
    failures=$((failures + 1)); return
  fi
  if ! grep -qF -- "$want" <<<"$out"; then
    echo "FAIL $name: message does not contain '$want':"; echo "$out"
    failures=$((failures + 1)); return
  fi
  passed=$((passed + 1))
  echo "ok   $name: $(head -n 1 <<<"$out")"
}

# A copy of a fixture model with a tokenizer-free prompt path (--raw with --prompt-ids).
model="$tmp/model"
cp -r "$good" "$model"
echo "hello" > "$tmp/prompt.txt"
: > "$tmp/empty.txt"

expect_error missing_model_dir "$tmp/nope" -- run --model "$tmp/nope" --prompt-file "$tmp/prompt.txt"
expect_error missing_prompt_file "$tmp/none.txt" -- run --model "$model" --prompt-file "$tmp/none.txt"
expect_error empty_prompt "empty" -- run --model "$model" --prompt-ids ""
expect_error id_out_of_range "100000" -- run --model "$model" --prompt-ids "1,2,100000"
expect_error too_long "max" -- run --model "$model" --prompt-ids "1,2,3,4,5,6" --max-context 4
expect_error bad_chunk "chunk" -- run --model "$model" --prompt-ids "1,2" --chunk-size 0
expect_error unknown_device "unknown device 'tpu'" -- run --model "$model" --prompt-ids "1,2" --device tpu
expect_error preset_without_weights "--random-weights" -- run --preset Qwen2.5-7B-Instruct-1M --prompt-ids "1,2"
expect_error unknown_preset "no model preset 'Qwen9'" -- run --preset Qwen9 --random-weights 1 --prompt-ids "1"
expect_error preset_text_prompt "no tokenizer" -- run --preset Qwen2.5-7B-Instruct-1M --random-weights 1 --prompt "hi"
expect_error model_and_preset "exactly one of --model" -- run --model "$model" --preset Qwen2.5-7B-Instruct-1M --random-weights 1 --prompt-ids "1"
expect_error dca_misaligned "multiple of 64" -- run --model "$model" --prompt-ids "1,2" \
  --dca-chunk-size 512 --dca-local-size 100
expect_error dca_no_chunk "leaves no chunk" -- run --model "$model" --prompt-ids "1,2" \
  --dca-chunk-size 512 --dca-local-size 512
expect_error dca_on_and_off "both disabled and configured" -- run --model "$model" \
  --prompt-ids "1,2" --no-dca --dca-local-size 64

# Corrupt / truncated model files.
trunc="$tmp/trunc"; cp -r "$good" "$trunc"
head -c 100000 "$good/model.safetensors" > "$trunc/model.safetensors"
expect_error truncated_safetensors "model.safetensors" -- run --model "$trunc" --prompt-ids "1,2"
hdr="$tmp/hdr"; cp -r "$good" "$hdr"
printf '\xff\xff\xff\xff\xff\xff\x00\x00{not json' > "$hdr/model.safetensors"
expect_error corrupt_header "model.safetensors" -- run --model "$hdr" --prompt-ids "1,2"
arch="$tmp/arch"; cp -r "$good" "$arch"
sed -i 's/"LlamaForCausalLM"/"GPTNeoXForCausalLM"/; s/"Qwen2ForCausalLM"/"GPTNeoXForCausalLM"/' \
  "$arch/config.json"
expect_error unknown_architecture "GPTNeoXForCausalLM" -- run --model "$arch" --prompt-ids "1,2"
badjson="$tmp/badjson"; cp -r "$good" "$badjson"
echo '{"architectures": [' > "$badjson/config.json"
expect_error corrupt_config "config.json" -- run --model "$badjson" --prompt-ids "1,2"
expect_error missing_gguf "$tmp/x.gguf" -- convert-gguf "$tmp/x.gguf" "$tmp/out"
printf 'GGUF\x03\x00\x00\x00' > "$tmp/short.gguf"
expect_error truncated_gguf "short.gguf" -- convert-gguf "$tmp/short.gguf" "$tmp/out2"

# The cluster commands.
expect_error local_missing_model "$tmp/nope" -- local --model "$tmp/nope" --stages 2
expect_error local_no_model "--model" -- local --stages 2
expect_error coordinator_missing_model "$tmp/nope" -- coordinator --model "$tmp/nope" --check-config
printf 'listen: 127.0.0.1:0\nbogus: 1\n' > "$tmp/bad.yaml"
expect_error coordinator_unknown_key "unknown option 'bogus'" -- coordinator --config "$tmp/bad.yaml"
expect_error coordinator_missing_config "$tmp/none.yaml" -- coordinator --config "$tmp/none.yaml"
expect_error worker_decode_role "only prefill" -- worker --role decode
expect_error generate_no_prompt "exactly one of" -- generate --address 127.0.0.1:1
expect_error generate_unreachable "UNAVAILABLE" -- generate --address 127.0.0.1:1 --prompt-ids 1,2
export MILLIPEDE_RAW=maybe
expect_error generate_bad_env "MILLIPEDE_RAW must be true or false" -- generate --prompt hi
unset MILLIPEDE_RAW

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
