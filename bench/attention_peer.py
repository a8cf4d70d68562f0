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

With --variants, every entry of the library's candidate list (bench/cuda/prefill_variants.h:
"default", "dca", then the candidates compiled into the library) runs too, plus "default@seq",
the default kernel on an in-order block table (the others use a shuffled one). All are timed
round-robin with cuDNN; each entry's output is compared with its baseline's ("default" or
"dca", max |diff|; the script fails above 5e-2), "default" with cuDNN as above, and the last
table gives, per entry and case, TFLOP/s and the ratio to cuDNN. DCA entries use the Qwen2.5-1M
constants (C = 253952, S = 262144, theta 1e7) and do the same FLOPs. While it runs, nvidia-smi
is sampled (when present) and the mean SM clock and power during each entry's launches are
reported, to tell power or clock limits from kernel effects.

With --only NAME,..., only those rows run (with --variants), plus "default" and the baselines
of the named rows.

  python3 bench/attention_peer.py [--lib .bundle/libmp_attention_bench.so] [--variants]
                                  [--only NAME,...] [--cases 32k,128k,512k,1m] [--iters N]
                                  [--json FILE]
"""
import argparse
import ctypes
import json
import math
import shutil
import statistics
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, HKV, D, CHUNK, BLOCK = 28, 4, 128, 32768, 64
CASES = {"32k": 0, "128k": 131072 - CHUNK, "256k": 262144 - CHUNK, "512k": 524288 - CHUNK,
         "1m": 1048576 - CHUNK}
QWEN_DCA = (253952, 262144, 1e7)  # chunk_len, chunk_size, rope_theta


class ClockSampler:
    """nvidia-smi samples (host time, SM MHz, W, C) every 100 ms, when nvidia-smi exists."""

    def __init__(self):
        self.samples, self.proc = [], None
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return
        self.proc = subprocess.Popen(
            [exe, "--query-gpu=clocks.sm,power.draw,temperature.gpu",
             "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                mhz, watts, temp = (float(x) for x in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.monotonic(), mhz, watts, temp))

    def mean(self, intervals):
        """Mean (MHz, W, C) over the samples inside any of the (t0, t1) intervals, or None."""
        got = [s for s in list(self.samples) if any(a <= s[0] <= b for a, b in intervals)]
        if not got:
            return None
        return tuple(statistics.mean(s[i] for s in got) for i in (1, 2, 3))

    def stop(self):
        if self.proc:
            self.proc.terminate()


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
        self.lib = ctypes.CDLL(path)
        self.fn = self.lib.mp_bench_paged_prefill_attention
        self.fn.restype = ctypes.c_int
        self.fn.argtypes = ([ctypes.c_void_p] * 5 + [ctypes.c_void_p] + [ctypes.c_int64] * 8 +
                            [ctypes.c_int, ctypes.c_float, ctypes.c_void_p])
        self.lib.mp_bench_prefill_variant_count.restype = ctypes.c_int
        for f in ("name", "baseline", "what"):
            getattr(self.lib, f"mp_bench_prefill_variant_{f}").restype = ctypes.c_char_p
            getattr(self.lib, f"mp_bench_prefill_variant_{f}").argtypes = [ctypes.c_int]
        self.lib.mp_bench_prefill_variant_is_dca.argtypes = [ctypes.c_int]
        self.variant_fn = self.lib.mp_bench_prefill_variant
        self.variant_fn.restype = ctypes.c_int
        self.variant_fn.argtypes = ([ctypes.c_int] + [ctypes.c_void_p] * 6 +
                                    [ctypes.c_int64] * 8 + [ctypes.c_int, ctypes.c_float,
                                    ctypes.c_int64, ctypes.c_int64, ctypes.c_double,
                                    ctypes.c_void_p])

    @staticmethod
    def page(kv, perm):
        # kv: (1, HKV, keys, D) -> cache [blocks, HKV, BLOCK, D], block b stored at perm[b].
        blocks = kv.shape[2] // BLOCK
        paged = kv[0].reshape(HKV, blocks, BLOCK, D).permute(1, 0, 2, 3)
        cache = torch.empty_like(paged, memory_format=torch.contiguous_format)
        cache[perm] = paged
        return cache

    def variants(self):
        """[(index, name, is_dca, baseline, what)] of the library's candidate list."""
        lib = self.lib
        return [(i, lib.mp_bench_prefill_variant_name(i).decode(),
                 bool(lib.mp_bench_prefill_variant_is_dca(i)),
                 lib.mp_bench_prefill_variant_baseline(i).decode(),
                 lib.mp_bench_prefill_variant_what(i).decode())
                for i in range(lib.mp_bench_prefill_variant_count())]

    def run(self, q, k_cache, v_cache, table, out, key_begin, key_end, causal, scale):
        err = self.fn(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), table.data_ptr(),
                      out.data_ptr(), None, q.shape[0], H, HKV, D, k_cache.shape[0], BLOCK,
                      key_begin, key_end, int(causal), scale,
                      torch.cuda.current_stream().cuda_stream)
        if err != 0:
            raise RuntimeError(f"mp_bench_paged_prefill_attention failed: cudaError {err}")

    def run_variant(self, index, q, k_cache, v_cache, table, out, key_end, scale):
        """Entry `index` over the keys [0, key_end), causal (dca entries: Qwen constants)."""
        err = self.variant_fn(index, q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                              table.data_ptr(), out.data_ptr(), None, q.shape[0], H, HKV, D,
                              k_cache.shape[0], BLOCK, 0, key_end, 1, scale, *QWEN_DCA,
                              torch.cuda.current_stream().cuda_stream)
        if err != 0:
            raise RuntimeError(f"prefill variant {index} failed: cudaError {err}")


def rel_diff(ours_nhd, ref_bhsd):
    ref = ref_bhsd[0].transpose(0, 1).float()  # (n, H, D)
    return ((ours_nhd.float() - ref).norm() / ref.norm()).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", help="libmp_attention_bench.so: also run our kernel")
    parser.add_argument("--variants", action="store_true",
                        help="also every entry of the library's candidate list (needs --lib)")
    parser.add_argument("--only", help="with --variants: keep these rows (comma-separated), "
                        "plus default and their baselines")
    parser.add_argument("--cases", default="32k,128k,512k,1m")
    parser.add_argument("--iters", type=int, default=0, help="timed rounds (0: per case)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.variants and not args.lib:
        parser.error("--variants needs --lib")
    if args.only and not args.variants:
        parser.error("--only needs --variants")

    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}", flush=True)
    ours = Ours(args.lib) if args.lib else None
    entries = []  # (row name, variant index or None, is_dca, baseline, in-order table)
    if ours and args.variants:
        for index, name, is_dca, baseline, what in ours.variants():
            entries.append((name, index, is_dca, baseline, False))
            print(f"  {name}: {what}")
        entries.append(("default@seq", 0, False, "default", True))
        print("  default@seq: the default kernel on an in-order block table")
        if args.only:
            wanted = set(args.only.split(","))
            unknown = wanted - {e[0] for e in entries}
            if unknown:
                parser.error(f"--only: no such rows: {', '.join(sorted(unknown))}")
            wanted |= {"default"} | {e[3] for e in entries if e[0] in wanted}
            entries = [e for e in entries if e[0] in wanted]
            print(f"  rows kept: {', '.join(e[0] for e in entries)}")
    elif ours:
        entries.append(("ours", None, False, "ours", False))
    sampler = ClockSampler()
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
        rounds = args.iters or (5 if cached >= 400000 else 10)
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
        caches = {}
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            ref_diag = cudnn_diag()  # warm-up and reference
            ref_pre = cudnn_prefix() if cached else None
            fns = {"cudnn_diag": cudnn_diag}
            if cached:
                fns["cudnn_prefix"] = cudnn_prefix
            if ours:
                perm = torch.randperm(keys // BLOCK, device=dev, generator=gen)
                caches[False] = (Ours.page(k_all, perm), Ours.page(v_all, perm),
                                 perm.to(torch.int32))
                if any(e[4] for e in entries):
                    ident = torch.arange(keys // BLOCK, device=dev)
                    caches[True] = (Ours.page(k_all, ident), Ours.page(v_all, ident),
                                    ident.to(torch.int32))
                k_cache, v_cache, table = caches[False]
                out = torch.empty_like(q_nhd)
                ours.run(q_nhd, k_cache, v_cache, table, out, cached, keys, True, scale)
                row["diff_causal_part"] = rel_diff(out, ref_diag)
                if cached:
                    ours.run(q_nhd, k_cache, v_cache, table, out, 0, cached, False, scale)
                    row["diff_prefix_part"] = rel_diff(out, ref_pre)
                baseline_out, diffs = {}, {}
                for ename, index, is_dca, baseline, seq in entries:
                    kc, vc, tb = caches[seq]
                    if index is None:
                        fn = (lambda kc=kc, vc=vc, tb=tb:
                              ours.run(q_nhd, kc, vc, tb, out, 0, keys, True, scale))
                    else:
                        fn = (lambda index=index, kc=kc, vc=vc, tb=tb:
                              ours.run_variant(index, q_nhd, kc, vc, tb, out, keys, scale))
                    out.fill_(float("nan"))
                    fn()  # warm-up and check
                    torch.cuda.synchronize()
                    finite = bool(torch.isfinite(out).all().item())
                    if ename == baseline:
                        baseline_out[ename] = out.clone()
                        diffs[ename] = 0.0
                    else:
                        diffs[ename] = (out.float() - baseline_out[baseline].float()).abs().max().item()
                    if not finite:
                        diffs[ename] = float("nan")
                    fns[ename] = fn
                row["max_diff_vs_baseline"] = diffs
                del baseline_out
            del ref_diag, ref_pre
            times = {k: [] for k in fns}
            spans = {k: [] for k in fns}
            for _ in range(rounds):
                for k, fn in fns.items():
                    t0 = time.monotonic()
                    times[k].append(time_ms(fn))
                    spans[k].append((t0, time.monotonic()))
        flops = 4.0 * H * D * CHUNK * (cached + CHUNK / 2)
        med = {k: statistics.median(v) for k, v in times.items()}
        row["cudnn_ms"] = med["cudnn_diag"] + med.get("cudnn_prefix", 0.0)
        row["cudnn_diag_ms"] = med["cudnn_diag"]
        row["cudnn_prefix_ms"] = med.get("cudnn_prefix", 0.0)
        row["cudnn_tflops"] = flops / (row["cudnn_ms"] * 1e-3) / 1e12
        clock = {}
        for k in fns:
            m = sampler.mean(spans[k] + (spans["cudnn_prefix"] if k == "cudnn_diag" and cached
                                         else []))
            if m:
                clock[k] = {"sm_mhz": round(m[0]), "watts": round(m[1]), "temp_c": round(m[2])}
        row["clock"] = clock
        if ours:
            row["entries"] = {}
            for ename, index, is_dca, baseline, seq in entries:
                row["entries"][ename] = {
                    "ms": med[ename], "tflops": flops / (med[ename] * 1e-3) / 1e12,
                    "baseline": baseline, "dca": is_dca,
                    "max_diff_vs_baseline": row["max_diff_vs_baseline"][ename]}
                failed |= not (row["max_diff_vs_baseline"][ename] <= 5e-2)
            first = entries[0][0]
            row["ours_ms"] = med[first]
            row["ours_tflops"] = row["entries"][first]["tflops"]
            for part in ("diff_causal_part", "diff_prefix_part"):
                failed |= not (row.get(part, 0.0) <= 2e-2)
        row["rounds"] = rounds
        results.append(row)
        print(json.dumps(row), flush=True)
        del k_all, v_all, k_diag, v_diag, k_pre, v_pre, caches
        if ours:
            del k_cache, v_cache, table, out
        torch.cuda.empty_cache()
    sampler.stop()

    print()
    print("| case (32K chunk after P keys) | keys | cuDNN ms | cuDNN TFLOP/s | ours ms | "
          "ours TFLOP/s | ours / cuDNN |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        mine = (f"{r['ours_ms']:.2f} | {r['ours_tflops']:.0f} | "
                f"{r['ours_tflops'] / r['cudnn_tflops']:.2f}x") if "ours_ms" in r else "- | - | -"
        print(f"| {r['case']} | {r['keys']} | {r['cudnn_ms']:.2f} | {r['cudnn_tflops']:.0f} | "
              f"{mine} |")
    if ours and args.variants:
        cases = [r["case"] for r in results]
        print()
        print("TFLOP/s (ratio to cuDNN in the same run); DCA rows do the same FLOPs")
        print("| kernel | " + " | ".join(cases) + " |")
        print("| --- |" + " --- |" * len(cases))
        print("| cuDNN | " + " | ".join(f"{r['cudnn_tflops']:.0f}" for r in results) + " |")
        for ename, *_ in entries:
            cells = [f"{r['entries'][ename]['tflops']:.0f} "
                     f"({r['entries'][ename]['tflops'] / r['cudnn_tflops']:.3f}x)"
                     for r in results]
            print(f"| {ename} | " + " | ".join(cells) + " |")
        print()
        print("time / default, time / baseline, max |out - baseline out|, mean SM MHz and W "
              "during the row's launches")
        print("| kernel | " + " | ".join(cases) + " |")
        print("| --- |" + " --- |" * len(cases))
        rows = ["cudnn_diag"] + [e[0] for e in entries]
        for ename in rows:
            cells = []
            for r in results:
                c = r["clock"].get(ename)
                ck = f"{c['sm_mhz']} MHz {c['watts']} W" if c else "-"
                if ename == "cudnn_diag":
                    cells.append(f"{r['cudnn_ms'] / r['entries']['default']['ms']:.3f}, -, -, "
                                 f"{ck}")
                    continue
                e = r["entries"][ename]
                base = r["entries"][e["baseline"]]
                cells.append(f"{e['ms'] / r['entries']['default']['ms']:.3f}, "
                             f"{e['ms'] / base['ms']:.3f}, {e['max_diff_vs_baseline']:.1e}, {ck}")
            print(f"| {'cuDNN' if ename == 'cudnn_diag' else ename} | " + " | ".join(cells) +
                  " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if failed:
        print("FAILED: our output differs from cuDNN's by more than 2e-2, or a variant's from "
              "its baseline's by more than 5e-2 (or is not finite)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
