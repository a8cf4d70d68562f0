#!/usr/bin/env python3
"""Writes a sparse_attention_config.json for a model of L layers x H heads whose per-head
budgets are taken from another model's file (e.g. Qwen2.5-7B-Instruct-1M's): layer l takes
source layer floor(l * L_src / L), head h source head (3 h + l) mod H_src, so that the budgets
are distributed like the source file's. Prints the mean budgets of both.

    bench/map_sparse_budgets.py SOURCE.json LAYERS HEADS OUT.json
"""
import json
import sys


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    src = json.load(open(sys.argv[1]))
    layers, heads = int(sys.argv[2]), int(sys.argv[3])
    if layers < 1 or heads < 1:
        sys.exit("LAYERS and HEADS must be positive")
    src_layers, src_heads = len(src), len(src[0])
    out, v, s = [], [], []
    for l in range(layers):
        sl = min(src_layers - 1, l * src_layers // layers)
        layer = {}
        for h in range(heads):
            e = src[sl][str((3 * h + l) % src_heads)]
            layer[str(h)] = ["vertical_and_slash", e[1], e[2], e[3]]
            v.append(e[1])
            s.append(e[2])
        out.append(layer)
    with open(sys.argv[4], "w") as f:
        json.dump(out, f)
    all_v = [e[1] for layer in src for e in layer.values()]
    all_s = [e[2] for layer in src for e in layer.values()]
    print("mean (vertical, slash): mapped (%.0f, %.0f), source (%.0f, %.0f)" %
          (sum(v) / len(v), sum(s) / len(s), sum(all_v) / len(all_v), sum(all_s) / len(all_s)))


if __name__ == "__main__":
    main()
