#!/usr/bin/env python3
"""Builds the tiny random Qwen2 and Llama fixtures under tests/testdata/.

Needs torch, transformers and safetensors. For each model it writes
  <name>/config.json, <name>/model.safetensors (f32)   - the model
  <name>/expected.safetensors                            - what transformers computes:
      input_ids  I32 [T]         the prompt (T = 100 random ids)
      logits     F32 [T, vocab]  logits at every prompt position (fp32, eager attention, CPU)
      greedy_ids I32 [G]         greedy continuation of G = 16 tokens (no stop token)

Usage: python3 tests/testdata/make_fixtures.py [OUT_DIR]   (default: this script's folder)
"""
import os
import sys

import torch
from safetensors.torch import save_file
import transformers

PROMPT_LEN = 100
NEW_TOKENS = 16

COMMON = dict(
    vocab_size=512,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
)


def randomize(model, seed):
    """Random values everywhere, biases and norm weights included (the defaults are 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def build(name, config, seed, out_dir):
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    cls = {"qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM}
    model = cls[config.model_type](config).to(torch.float32).eval()
    randomize(model, seed)
    if config.tie_word_embeddings:
        model.tie_weights()
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)

    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(3, config.vocab_size, (1, PROMPT_LEN), generator=g)
    with torch.no_grad():
        logits = model(ids).logits[0].to(torch.float32).contiguous()
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    greedy = out[0, PROMPT_LEN:].to(torch.int32).contiguous()
    assert greedy.numel() == NEW_TOKENS
    save_file({"input_ids": ids[0].to(torch.int32).contiguous(), "logits": logits,
               "greedy_ids": greedy},
              os.path.join(d, "expected.safetensors"),
              metadata={"transformers": transformers.__version__, "torch": torch.__version__})
    print(f"{name}: logits {tuple(logits.shape)} greedy {greedy.tolist()}")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(4)
    qwen = transformers.Qwen2Config(**COMMON, rope_theta=1000000.0, tie_word_embeddings=False,
                                    use_sliding_window=False)
    llama = transformers.LlamaConfig(**COMMON, rope_theta=10000.0, tie_word_embeddings=True,
                                     attention_bias=False)
    build("tiny_qwen2", qwen, 1234, out_dir)
    build("tiny_llama", llama, 5678, out_dir)


if __name__ == "__main__":
    main()
