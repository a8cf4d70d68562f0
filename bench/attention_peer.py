#!/usr/bin/env python3
"""cuDNN peer for the sm_90a paged prefill attention kernel: same shapes, same FLOP count.

Shapes: 28 query heads, 4 KV heads, head_dim 128, bf16, one 32K-token chunk of queries after
P cached keys, bottom-right causal. cuDNN runs through torch SDPA restricted to
SDPBackend.CUDNN_ATTENTION with enable_gqa=True (K/V not repeated). PyTorch's is_causal is
top-left aligned when Sq != Sk, so for P > 0 the same work is timed as two cuDNN calls over
disjoint key sets: the chunk against the P cached keys without a mask, plus the chunk against
its own 32K keys with is_causal; their median times are added (merging the two parts is not
counted, which favours cuDNN slightly). FLOPs: 4 * H * D * n * (P + n / 2).

With --lib (libmp_attention_bench.so from bench/cuda/build_standalone.sh) our kernel runs on
the same data from a paged cache (block_size 64, shuffled block table) and is timed
interleaved with cuDNN (one launch of each per round, so clock and temperature drift hit both
alike). Its output is also checked against cuDNN on the two parts above: our kernel over keys
[P, P + n) causal vs cuDNN's causal part, and over keys [0, P) without a mask vs cuDNN's
prefix part (relative Frobenius difference; the script fails above 2e-2).

  python3 bench/attention_peer.py [--lib .bundle/libmp_attention_bench.so]
                                  [--cases 32k,128k,512k,1m] [--iters N] [--json FILE]
"""
import argparse
import ctypes
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, HKV, D, CHUNK, BLOCK = 28, 4, 128, 32768, 64
CASES = {"32k": 0, "128k": 131072 - CHUNK, "512k": 524288 - CHUNK, "1m": 1048576 - CHUNK}


def time_ms(fn):
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop)


class Ours:
    """Our kernel through the C entry point, on a paged copy of contiguous K/V."""

    def __init__(self, path):
        self.fn = ctypes.CDLL(path).mp_bench_paged_prefill_attention
        self.fn.restype = ctypes.c_int
        self.fn.argtypes = ([ctypes.c_void_p] * 5 + [ctypes.c_void_p] + [ctypes.c_int64] * 8 +
                            [ctypes.c_int, ctypes.c_float, ctypes.c_void_p])

    @staticmethod
    def page(kv, perm):
        # kv: (1, HKV, keys, D) -> cache [blocks, HKV, BLOCK, D], block b stored at perm[b].
        blocks = kv.shape[2] // BLOCK
        paged = kv[0].reshape(HKV, blocks, BLOCK, D).permute(1, 0, 2, 3)
        cache = torch.empty_like(paged, memory_format=torch.contiguous_format)
        cache[perm] = paged
        return cache

    def run(self, q, k_cache, v_cache, table, out, key_begin, key_end, causal, scale):
        err = self.fn(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), table.data_ptr(),
                      out.data_ptr(), None, q.shape[0], H, HKV, D, k_cache.shape[0], BLOCK,
                      key_begin, key_end, int(causal), scale,
                      torch.cuda.current_stream().cuda_stream)
        if err != 0:
            raise RuntimeError(f"mp_bench_paged_prefill_attention failed: cudaError {err}")


def rel_diff(ours_nhd, ref_bhsd):
    ref = ref_bhsd[0].transpose(0, 1).float()  # (n, H, D)
    return ((ours_nhd.float() - ref).norm() / ref.norm()).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", help="libmp_attention_bench.so: also run our kernel")
    parser.add_argument("--cases", default="32k,128k,512k,1m")
    parser.add_argument("--iters", type=int, default=0, help="timed rounds (0: per case)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}", flush=True)
    ours = Ours(args.lib) if args.lib else None
    scale = 1.0 / math.sqrt(D)
    gen = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=dev, dtype=torch.bfloat16, generator=gen)

    q_bhsd = randn(1, H, CHUNK, D)
    q_nhd = q_bhsd[0].transpose(0, 1).contiguous()  # our layout [n, H, D]
    results, failed = [], False
    for name in args.cases.split(","):
        cached = CASES[name]
        keys = cached + CHUNK
        rounds = args.iters or (3 if cached >= 400000 else 10)
        k_all, v_all = randn(1, HKV, keys, D), randn(1, HKV, keys, D)
        k_diag, v_diag = k_all[:, :, cached:].contiguous(), v_all[:, :, cached:].contiguous()
        k_pre = k_all[:, :, :cached].contiguous() if cached else None
        v_pre = v_all[:, :, :cached].contiguous() if cached else None

        def cudnn_diag():
            return F.scaled_dot_product_attention(q_bhsd, k_diag, v_diag, is_causal=True,
                                                  scale=scale, enable_gqa=True)

        def cudnn_prefix():
            return F.scaled_dot_product_attention(q_bhsd, k_pre, v_pre, scale=scale,
                                                  enable_gqa=True)

        row = {"case": name, "keys": keys}
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            ref_diag = cudnn_diag()  # warm-up and reference
            ref_pre = cudnn_prefix() if cached else None
            fns = {"cudnn_diag": cudnn_diag}
            if cached:
                fns["cudnn_prefix"] = cudnn_prefix
            if ours:
                perm = torch.randperm(keys // BLOCK, device=dev, generator=gen)
                k_cache, v_cache = Ours.page(k_all, perm), Ours.page(v_all, perm)
                table = perm.to(torch.int32)
                out = torch.empty_like(q_nhd)
                ours.run(q_nhd, k_cache, v_cache, table, out, cached, keys, True, scale)
                row["diff_causal_part"] = rel_diff(out, ref_diag)
                if cached:
                    ours.run(q_nhd, k_cache, v_cache, table, out, 0, cached, False, scale)
                    row["diff_prefix_part"] = rel_diff(out, ref_pre)
                fns["ours"] = lambda: ours.run(q_nhd, k_cache, v_cache, table, out, 0, keys,
                                               True, scale)
                fns["ours"]()  # warm-up
            del ref_diag, ref_pre
            times = {k: [] for k in fns}
            for _ in range(rounds):
                for k, fn in fns.items():
                    times[k].append(time_ms(fn))
        flops = 4.0 * H * D * CHUNK * (cached + CHUNK / 2)
        med = {k: statistics.median(v) for k, v in times.items()}
        row["cudnn_ms"] = med["cudnn_diag"] + med.get("cudnn_prefix", 0.0)
        row["cudnn_diag_ms"] = med["cudnn_diag"]
        row["cudnn_prefix_ms"] = med.get("cudnn_prefix", 0.0)
        row["cudnn_tflops"] = flops / (row["cudnn_ms"] * 1e-3) / 1e12
        if ours:
            row["ours_ms"] = med["ours"]
            row["ours_tflops"] = flops / (med["ours"] * 1e-3) / 1e12
            for part in ("diff_causal_part", "diff_prefix_part"):
                failed |= not (row.get(part, 0.0) <= 2e-2)
        row["rounds"] = rounds
        results.append(row)
        print(json.dumps(row), flush=True)
        del k_all, v_all, k_diag, v_diag, k_pre, v_pre
        if ours:
            del k_cache, v_cache, table, out
        torch.cuda.empty_cache()

    print()
    print("| case (32K chunk after P keys) | keys | cuDNN ms | cuDNN TFLOP/s | ours ms | "
          "ours TFLOP/s | ours / cuDNN |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        mine = (f"{r['ours_ms']:.2f} | {r['ours_tflops']:.0f} | "
                f"{r['ours_tflops'] / r['cudnn_tflops']:.2f}x") if "ours_ms" in r else "- | - | -"
        print(f"| {r['case']} | {r['keys']} | {r['cudnn_ms']:.2f} | {r['cudnn_tflops']:.0f} | "
              f"{mine} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if failed:
        print("FAILED: our output differs from cuDNN's by more than 2e-2", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
