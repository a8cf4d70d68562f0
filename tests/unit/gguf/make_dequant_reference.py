#!/usr/bin/env python3
"""Writes a GGUF with random tensors of every type Millipede dequantizes, and the values PyPI
`gguf` dequantizes them to, for gguf_dequant_reference_test.

Usage: make_dequant_reference.py OUT_DIR

OUT_DIR/dequant.gguf    tensors (F32, F16, BF16, Q8_0, Q4_0, Q4_1; 1 to 3 dimensions), written
                        with gguf.GGUFWriter. Quantized tensors come twice: quantized from random
                        floats by gguf.quants.quantize, and as raw random blocks (any quant
                        pattern, random finite f16 scales) to cover every bit pattern.
OUT_DIR/index.json      {"tensors": [{"name", "type", "shape" (numpy order), "file"}]}
OUT_DIR/<name>.f32      gguf.quants.dequantize of the tensor as read back by gguf.GGUFReader,
                        little-endian float32, row-major.
"""
import json
import os
import sys

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as Q
except ImportError as e:  # the test must fail, not skip, without its reference
    sys.exit(f"make_dequant_reference.py needs the PyPI packages gguf and numpy: {e}")


def random_f16_bits(rng, n, finite=True):
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    if finite:  # exponent 31 is inf / NaN: move those to exponent 30
        exp = (bits >> 10) & 0x1F
        bits = np.where(exp == 0x1F, bits & ~np.uint16(0x0400), bits).astype(np.uint16)
    return bits


def raw_blocks(rng, qtype, rows, cols):
    """Random blocks of `qtype` for a [rows, cols] tensor, as uint8 [rows, bytes_per_row]."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nblocks = rows * cols // block
    data = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint16).astype(np.uint8)
    scales = 2 if qtype == Q.Q4_1 else 1  # Q4_1 has d and m
    f16 = random_f16_bits(rng, nblocks * scales).reshape(nblocks, scales)
    data[:, : 2 * scales] = f16.view(np.uint8).reshape(nblocks, 2 * scales)
    return data.reshape(rows, cols // block * size)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20250101)
    tensors = []  # (name, array, raw_dtype or None)

    tensors.append(("f32.2d", rng.standard_normal((3, 40)).astype(np.float32), None))
    tensors.append(("f32.1d", (rng.standard_normal(7) * 1e30).astype(np.float32), None))

    f16 = rng.standard_normal((4, 33)).astype(np.float16)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 6.1e-5, 5.96e-8, -5.96e-8, 65504],
                        dtype=np.float16)
    f16.reshape(-1)[: len(specials)] = specials
    tensors.append(("f16.values", f16, None))
    all_f16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    tensors.append(("f16.every_pattern", all_f16.reshape(256, 256), None))

    bf16_bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    tensors.append(("bf16.every_pattern", bf16_bits.view(np.uint8).reshape(256, 512), Q.BF16))
    tensors.append(("bf16.quantized",
                    gguf.quants.quantize(rng.standard_normal((5, 6)).astype(np.float32), Q.BF16),
                    Q.BF16))

    for qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1):
        name = qtype.name.lower()
        values = (rng.standard_normal((6, 128)) * rng.uniform(0.01, 10)).astype(np.float32)
        values[0, :32] = 0.0  # an all-zero block (scale 0)
        values[1, :32] = 3.0  # a constant block
        tensors.append((f"{name}.quantized", gguf.quants.quantize(values, qtype), qtype))
        tensors.append((f"{name}.raw", raw_blocks(rng, qtype, 64, 256), qtype))
        three_d = rng.standard_normal((2, 3, 64)).astype(np.float32)
        tensors.append((f"{name}.3d", gguf.quants.quantize(three_d, qtype), qtype))

    path = os.path.join(out, "dequant.gguf")
    writer = gguf.GGUFWriter(path, "reference")
    for name, array, raw_dtype in tensors:
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # The reference: what PyPI gguf reads and dequantizes from the file just written.
    reader = gguf.GGUFReader(path)
    index = []
    for t in reader.tensors:
        ref = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type),
                                   dtype=np.float32)
        shape = [int(d) for d in reversed(t.shape)]  # GGUF order -> numpy order
        if list(ref.shape) != shape:
            ref = ref.reshape(shape)
        file = t.name + ".f32"
        ref.astype("<f4").tofile(os.path.join(out, file))
        index.append({"name": t.name, "type": t.tensor_type.name, "shape": shape, "file": file})
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"tensors": index}, f, indent=1)
    print(f"wrote {len(index)} tensors to {out}")


if __name__ == "__main__":
    main()
