#!/usr/bin/env python3
"""Writes a tiny llama GGUF the way llama.cpp's converter lays one out, for the conversion test.

Usage: make_tiny_llama_gguf.py OUT_DIR

OUT_DIR/tiny.gguf           2 layers, hidden 64, 4 query / 2 KV heads of 16, random weights; the
                            Q and K rows permuted as llama.cpp's convert_hf_to_gguf.py does for
                            llama (LlamaModel.permute); F32, F16, Q8_0, Q4_0 and Q4_1 tensors; a
                            small byte-level BPE tokenizer (pre "smollm").
OUT_DIR/hf_reference.npz    the HF-layout originals of the tensors stored as F32, which the
                            conversion must give back exactly (Q/K rows included).
"""
import os
import sys

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as Q
except ImportError as e:
    sys.exit(f"make_tiny_llama_gguf.py needs the PyPI packages gguf and numpy: {e}")

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 64, 128, 2, 4, 2, 16


def permute(weights, n_head, n_head_kv):
    """convert_hf_to_gguf.py, LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def byte_alphabet():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + byte_alphabet()
    merges = ["\u0120 t", "h e", "\u0120t he", "i n", "\u0120 a"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    token_types = [3, 3, 3] + [1] * (len(tokens) - 3)
    vocab = len(tokens)

    writer = gguf.GGUFWriter(os.path.join(out, "tiny.gguf"), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(4096)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTER)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    reference = {}

    def add(gguf_name, hf_name, hf_weight, qtype, n_head=None):
        stored = hf_weight if n_head is None else permute(hf_weight, HEADS, n_head)
        if qtype == Q.F32:
            writer.add_tensor(gguf_name, stored)
            reference[hf_name] = hf_weight
        elif qtype == Q.F16:
            writer.add_tensor(gguf_name, stored.astype(np.float16))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(stored, qtype), raw_dtype=qtype)

    def randn(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    add("token_embd.weight", "model.embed_tokens.weight", randn(vocab, HIDDEN), Q.Q8_0)
    add("output_norm.weight", "model.norm.weight", randn(HIDDEN) + 1, Q.F32)
    add("output.weight", "lm_head.weight", randn(vocab, HIDDEN), Q.Q4_0)
    types = [
        {"q": Q.F32, "k": Q.F32, "v": Q.F16, "o": Q.Q8_0, "gate": Q.Q4_1, "up": Q.Q4_0,
         "down": Q.F32},
        {"q": Q.Q4_1, "k": Q.Q8_0, "v": Q.F32, "o": Q.F32, "gate": Q.F16, "up": Q.Q4_1,
         "down": Q.Q8_0},
    ]
    for layer in range(LAYERS):
        t = types[layer]
        g, h = f"blk.{layer}.", f"model.layers.{layer}."
        add(g + "attn_norm.weight", h + "input_layernorm.weight", randn(HIDDEN) + 1, Q.F32)
        add(g + "ffn_norm.weight", h + "post_attention_layernorm.weight", randn(HIDDEN) + 1, Q.F32)
        add(g + "attn_q.weight", h + "self_attn.q_proj.weight", randn(HEADS * HEAD_DIM, HIDDEN),
            t["q"], n_head=HEADS)
        add(g + "attn_k.weight", h + "self_attn.k_proj.weight",
            randn(KV_HEADS * HEAD_DIM, HIDDEN), t["k"], n_head=KV_HEADS)
        add(g + "attn_v.weight", h + "self_attn.v_proj.weight",
            randn(KV_HEADS * HEAD_DIM, HIDDEN), t["v"])
        add(g + "attn_output.weight", h + "self_attn.o_proj.weight",
            randn(HIDDEN, HEADS * HEAD_DIM), t["o"])
        add(g + "ffn_gate.weight", h + "mlp.gate_proj.weight", randn(INTER, HIDDEN), t["gate"])
        add(g + "ffn_up.weight", h + "mlp.up_proj.weight", randn(INTER, HIDDEN), t["up"])
        add(g + "ffn_down.weight", h + "mlp.down_proj.weight", randn(HIDDEN, INTER), t["down"])

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    np.savez(os.path.join(out, "hf_reference.npz"), **reference)
    print(f"wrote {out}/tiny.gguf ({len(reference)} F32 tensors kept as HF references)")


if __name__ == "__main__":
    main()
