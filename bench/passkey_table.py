#!/usr/bin/env python3
"""Markdown accuracy table (percent correct per mode, length and needle depth) of the per-trial
JSON lines that `mp_passkey_eval --jsonl` writes.

  python3 bench/passkey_table.py trials.jsonl [more.jsonl ...] [--label FILE=NAME ...]
"""
import argparse
import collections
import json
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="JSON lines of mp_passkey_eval --jsonl")
    parser.add_argument("--label", action="append", default=[],
                        help="FILE=NAME: call the modes of FILE 'mode (NAME)'")
    args = parser.parse_args()
    labels = dict(item.split("=", 1) for item in args.label)
    cells = collections.defaultdict(list)  # (mode, length, tokens) -> {depth: [correct]}
    depths = set()
    for path in args.files:
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if row.get("bench") != "passkey_trial":
                    continue
                mode = row["mode"] + (f" ({labels[path]})" if path in labels else "")
                key = (mode, row["length"], row["prompt_tokens"])
                cells[key].append((row["depth"], bool(row["correct"])))
                depths.add(row["depth"])
    if not cells:
        sys.exit("no passkey_trial lines in the input")
    depths = sorted(depths)
    print("| mode | length | tokens | " + " | ".join(f"{d}%" for d in depths) + " | all |")
    print("|---" * (len(depths) + 4) + "|")
    for (mode, length, tokens), trials in sorted(cells.items()):
        row = []
        for d in depths:
            hits = [c for dd, c in trials if dd == d]
            row.append(f"{100 * sum(hits) / len(hits):.0f}" if hits else "-")
        total = 100 * sum(c for _, c in trials) / len(trials)
        print(f"| {mode} | {length} | {tokens} | " + " | ".join(row) + f" | {total:.0f} |")


if __name__ == "__main__":
    main()
