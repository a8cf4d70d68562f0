#!/usr/bin/env python3
"""Checks a directory written by `millipede convert-gguf` against the GGUF it came from, using
only PyPI gguf / numpy / safetensors.

Usage: check_converted_weights.py [GGUF HF_DIR [HF_REFERENCE.npz]]
       (without arguments: $MILLIPEDE_SMOLLM2_GGUF and $MILLIPEDE_SMOLLM2_DIR, which must be set)

For every tensor of the GGUF: gguf.GGUFReader + gguf.quants.dequantize, the Hugging Face name
(the mapping transformers uses for llama), and for attn_q / attn_k the inverse of llama.cpp's row
permutation, done the way transformers' GGUF loader does it; the result must equal the tensor of
HF_DIR/model.safetensors bit for bit, and the two files must hold the same set of tensors.
config.json, tokenizer_config.json and generation_config.json are checked against the metadata.
HF_REFERENCE.npz (optional) holds HF-layout tensors the GGUF was made from, for tensors stored
unquantized: those must come back exactly.
"""
import json
import os
import re
import sys

try:
    import numpy as np
    import gguf
    from safetensors import safe_open
except ImportError as e:
    sys.exit(f"check_converted_weights.py needs the PyPI packages gguf, numpy, safetensors: {e}")

RENAMES = [
    (r"^token_embd\.", "model.embed_tokens."),
    (r"^output_norm\.", "model.norm."),
    (r"^output\.", "lm_head."),
    (r"^blk\.(\d+)\.", r"model.layers.\1."),
    (r"\.attn_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
    (r"\.attn_q\.", ".self_attn.q_proj."),
    (r"\.attn_k\.", ".self_attn.k_proj."),
    (r"\.attn_v\.", ".self_attn.v_proj."),
    (r"\.attn_output\.", ".self_attn.o_proj."),
    (r"\.ffn_gate\.", ".mlp.gate_proj."),
    (r"\.ffn_up\.", ".mlp.up_proj."),
    (r"\.ffn_down\.", ".mlp.down_proj."),
]


def hf_name(name):
    for pattern, repl in RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def reverse_permute(w, n_head):
    """transformers' LlamaTensorProcessor._reverse_permute_weights."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def main():
    args = sys.argv[1:]
    if not args:
        gguf_path = os.environ.get("MILLIPEDE_SMOLLM2_GGUF")
        hf_dir = os.environ.get("MILLIPEDE_SMOLLM2_DIR")
        if not gguf_path or not hf_dir:
            fail("MILLIPEDE_SMOLLM2_GGUF and MILLIPEDE_SMOLLM2_DIR must be set "
                 "(scripts/fetch_default_model.sh)")
        args = [gguf_path, hf_dir]
    gguf_path, hf_dir = args[0], args[1]
    reference = dict(np.load(args[2])) if len(args) > 2 else {}

    reader = gguf.GGUFReader(gguf_path)
    arch = field(reader, "general.architecture")
    heads = int(field(reader, f"{arch}.attention.head_count"))
    kv_heads = int(field(reader, f"{arch}.attention.head_count_kv") or heads)

    st = safe_open(os.path.join(hf_dir, "model.safetensors"), framework="numpy")
    ours = set(st.keys())
    expected = {hf_name(t.name) for t in reader.tensors}
    if ours != expected:
        fail(f"tensor sets differ: only in ours {sorted(ours - expected)[:5]}, "
             f"only in the GGUF {sorted(expected - ours)[:5]}")

    checked = permuted = exact_refs = 0
    for t in reader.tensors:
        name = hf_name(t.name)
        ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        ref = ref.reshape([int(d) for d in reversed(t.shape)])
        if ".attn_q." in t.name:
            ref = reverse_permute(ref, heads)
            permuted += 1
        elif ".attn_k." in t.name:
            ref = reverse_permute(ref, kv_heads)
            permuted += 1
        got = st.get_tensor(name)
        if got.dtype != np.float32:
            fail(f"{name} is {got.dtype}, expected float32")
        if got.shape != ref.shape:
            fail(f"{name} has shape {got.shape}, expected {ref.shape}")
        if not np.array_equal(got.view(np.uint32), np.ascontiguousarray(ref).view(np.uint32)):
            bad = np.flatnonzero(got.view(np.uint32) != ref.view(np.uint32))
            fail(f"{name} ({t.tensor_type.name}) differs at {bad.size} of {got.size} values, "
                 f"first at {bad[0]}: {got.flat[bad[0]]} vs {ref.flat[bad[0]]}")
        if name in reference:
            if not np.array_equal(got, reference[name]):
                fail(f"{name} differs from the HF-layout tensor the GGUF was made from")
            exact_refs += 1
        checked += 1
    if len(args) > 2 and exact_refs != len(reference):
        fail(f"only {exact_refs} of {len(reference)} reference tensors found")

    config = json.load(open(os.path.join(hf_dir, "config.json")))
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    want = {
        "hidden_size": field(reader, f"{arch}.embedding_length"),
        "intermediate_size": field(reader, f"{arch}.feed_forward_length"),
        "num_hidden_layers": field(reader, f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": field(reader, f"{arch}.context_length"),
        "vocab_size": int(embd.shape[1]),
        "tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors),
        "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field(reader, "tokenizer.ggml.eos_token_id"),
    }
    for key, value in want.items():
        if config.get(key) != value:
            fail(f"config.json {key} is {config.get(key)}, the GGUF says {value}")
    for key, gkey in (("rope_theta", "rope.freq_base"),
                      ("rms_norm_eps", "attention.layer_norm_rms_epsilon")):
        if np.float32(config[key]) != np.float32(field(reader, f"{arch}.{gkey}")):
            fail(f"config.json {key} is {config[key]}, the GGUF says "
                 f"{field(reader, f'{arch}.{gkey}')}")
    if config["architectures"] != ["LlamaForCausalLM"]:
        fail(f"config.json architectures is {config['architectures']}")

    tok_config = json.load(open(os.path.join(hf_dir, "tokenizer_config.json")))
    template = field(reader, "tokenizer.chat_template")
    if template is not None and tok_config.get("chat_template") != template:
        fail("tokenizer_config.json chat_template differs from tokenizer.chat_template")
    tokens = field(reader, "tokenizer.ggml.tokens")
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id")):
        token_id = field(reader, f"tokenizer.ggml.{key}")
        if token_id is not None and tok_config.get(name) != tokens[token_id]:
            fail(f"tokenizer_config.json {name} is {tok_config.get(name)!r}, "
                 f"expected {tokens[token_id]!r}")
    gen = json.load(open(os.path.join(hf_dir, "generation_config.json")))
    if gen.get("eos_token_id") != field(reader, "tokenizer.ggml.eos_token_id"):
        fail(f"generation_config.json eos_token_id is {gen.get('eos_token_id')}")

    print(f"{checked} tensors match bit for bit ({permuted} Q/K unpermuted, "
          f"{exact_refs} equal to their HF originals); configs match")


if __name__ == "__main__":
    main()
