#!/usr/bin/env python3
"""Cross-checks Millipede's safetensors reader and writer against the reference implementation.

Usage: safetensors_crosscheck.py TOOL WORK_DIR

TOOL is model_safetensors_tool: it reads a file with mp::SafetensorsFile, prints every tensor's
dtype, shape and values as JSON, and writes a copy with mp::WriteSafetensors. This script
  1. writes files with the PyPI `safetensors` package (safetensors.numpy.save_file, plus BF16
     through safetensors.serialize_file since numpy has no bfloat16),
  2. checks that the values the tool read are exactly the values written,
  3. reads the tool's copy back with `safetensors` and checks it is bit-identical,
  4. checks that the tool rejects a truncated file, naming it.
Needs `pip install safetensors numpy`; without them this test fails.
"""
import json
import math
import os
import subprocess
import sys

try:
    import numpy as np
    import safetensors
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
except ImportError as e:  # the test must fail, not skip
    print(f"FAIL: {e}. Install the reference implementation: pip install safetensors numpy")
    sys.exit(1)

FAILURES = []


def check(condition, message):
    if not condition:
        FAILURES.append(message)
        print("FAIL:", message)


def run_tool(tool, src, dst):
    proc = subprocess.run([tool, src, dst], capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def json_value(x):
    """The tool's JSON spelling of one element."""
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
    return x


def expected_values(array):
    if array.dtype.kind == "f":
        return [json_value(float(v)) for v in array.reshape(-1).astype(np.float64)]
    return [int(v) for v in array.reshape(-1)]


def random_arrays(rng):
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -3.4e38, 65504.0, 6e-8],
                       dtype=np.float32)
    with np.errstate(over="ignore"):  # -3.4e38 becomes -inf in float16, on purpose
        special16 = special.astype(np.float16)
    return {
        "model.embed_tokens.weight": rng.standard_normal((17, 8)).astype(np.float32),
        "f32.special": special,
        "f16.weight": rng.standard_normal((3, 4, 5)).astype(np.float16),
        "f16.special": special16,
        "i32": rng.integers(-2**31, 2**31 - 1, size=(11,), dtype=np.int32),
        "i64": rng.integers(-2**62, 2**62, size=(2, 3), dtype=np.int64),
        "u8": rng.integers(0, 256, size=(13,), dtype=np.uint8),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "model.layers.0.self_attn.q_proj.bias": rng.standard_normal((7,)).astype(np.float32),
    }


def compare_report(report, arrays, label):
    tensors = report["tensors"]
    check(sorted(tensors) == sorted(arrays), f"{label}: names {sorted(tensors)}")
    for name, array in arrays.items():
        if name not in tensors:
            continue
        got = tensors[name]
        check(got["shape"] == list(array.shape), f"{label}/{name}: shape {got['shape']}")
        check(got["values"] == expected_values(array), f"{label}/{name}: values differ")


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def bf16_bits(f32):
    """Rounds float32 values to bfloat16 bit patterns (nearest even)."""
    u = f32.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def serialize_bf16_file(path, tensors):
    """Writes {name: uint16 array of bf16 bits} as BF16 with the reference serializer."""
    if hasattr(safetensors, "TensorSpec"):
        specs = {n: safetensors.TensorSpec(dtype="bfloat16", shape=a.shape,
                                           data_ptr=a.ctypes.data, data_len=a.nbytes)
                 for n, a in tensors.items()}
    else:
        specs = {n: {"dtype": "bfloat16", "shape": list(a.shape), "data": a.tobytes()}
                 for n, a in tensors.items()}
    safetensors.serialize_file(specs, path, metadata={"format": "pt"})


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    tool, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(20250123)

    # 1-3: numpy dtypes through save_file.
    arrays = random_arrays(rng)
    metadata = {"format": "pt", "note": "written by safetensors.numpy"}
    src = os.path.join(work, "reference.safetensors")
    dst = os.path.join(work, "copy.safetensors")
    save_file(arrays, src, metadata=metadata)
    rc, out, err = run_tool(tool, src, dst)
    check(rc == 0, f"tool failed on {src}: {err}")
    if rc == 0:
        report = json.loads(out)
        check(report["metadata"] == metadata, f"metadata {report['metadata']}")
        compare_report(report, arrays, "save_file")
        back = load_file(dst)
        check(sorted(back) == sorted(arrays), "copy: names differ")
        for name, array in arrays.items():
            check(name in back and same_bits(back[name], array), f"copy/{name}: bits differ")
        with safe_open(dst, framework="np") as f:
            check(f.metadata() == metadata, f"copy metadata {f.metadata()}")

    # BF16 through the low-level serializer.
    f32 = np.concatenate([rng.standard_normal(40).astype(np.float32),
                          np.array([0.0, -0.0, np.inf, -np.inf, 1e-39, 3.0e38], np.float32)])
    bits = {"bf16.weight": bf16_bits(f32).reshape(2, 23), "bf16.vector": bf16_bits(f32[:5])}
    src16 = os.path.join(work, "reference_bf16.safetensors")
    dst16 = os.path.join(work, "copy_bf16.safetensors")
    serialize_bf16_file(src16, bits)
    rc, out, err = run_tool(tool, src16, dst16)
    check(rc == 0, f"tool failed on {src16}: {err}")
    if rc == 0:
        report = json.loads(out)
        for name, b in bits.items():
            got = report["tensors"].get(name, {})
            check(got.get("dtype") == "BF16", f"{name}: dtype {got.get('dtype')}")
            check(got.get("shape") == list(b.shape), f"{name}: shape {got.get('shape')}")
            want = [json_value(float(v)) for v in
                    (b.astype(np.uint32) << 16).view(np.float32).reshape(-1)]
            check(got.get("values") == want, f"{name}: values differ")
        with open(dst16, "rb") as f:
            parsed = dict(safetensors.deserialize(f.read()))
        for name, b in bits.items():
            info = parsed.get(name)
            check(info is not None and info["dtype"] in ("bfloat16", "BF16"),
                  f"copy {name}: {info and info['dtype']}")
            if info is not None:
                check(list(info["shape"]) == list(b.shape), f"copy {name}: shape")
                check(bytes(info["data"]) == b.tobytes(), f"copy {name}: bits differ")

    # 4: a truncated reference file is rejected with the file named.
    with open(src, "rb") as f:
        data = f.read()
    cut = os.path.join(work, "truncated.safetensors")
    with open(cut, "wb") as f:
        f.write(data[:-5])
    rc, out, err = run_tool(tool, cut, os.path.join(work, "never.safetensors"))
    check(rc != 0, "tool accepted a truncated file")
    check(cut in err and "truncated" in err, f"truncation error does not name the file: {err}")

    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        return 1
    print("safetensors cross-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
