#!/usr/bin/env python3
"""Checks the tokenizer.json written by `millipede convert-gguf` against transformers' own GGUF
tokenizer conversion of the same file (PyPI transformers + gguf + tokenizers; no torch).

Usage: check_tokenizer_vs_transformers.py [GGUF HF_DIR]
       (without arguments: $MILLIPEDE_SMOLLM2_GGUF and $MILLIPEDE_SMOLLM2_DIR, which must be set)

1. Vocabulary, merges and added tokens (content, id, flags) must equal transformers'.
2. Over >= 200 KB of varied text (Python source, English prose from docstrings, numbers, CJK,
   emoji, other scripts, whitespace runs, chat markup), encoded as segments and as one text:
   a. on text without digits, our ids must equal those of transformers' conversion;
   b. on all text, our ids must equal those of transformers' conversion with the pre-tokenizer
      llama.cpp uses for tokenizer.ggml.pre "smollm" (and starcoder, refact, ...): single digits
      split off first (regex \\p{N}), then the GPT-2 byte-level regex. transformers builds a plain
      GPT-2 byte-level pre-tokenizer for "smollm", without the digit split that SmolLM2's own
      tokenizer.json has (Digits(individual_digits=true) + ByteLevel), so with digits it can
      differ; how often is printed.
   c. decoding our ids gives the text back.
"""
import ast
import contextlib
import importlib
import io
import inspect
import json
import os
import random
import sys

try:
    import gguf
    import regex
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer)
except ImportError as e:
    sys.exit("check_tokenizer_vs_transformers.py needs the PyPI packages transformers, gguf, "
             f"tokenizers: {e}")

NUMBER = regex.compile(r"\p{N}")
DIGIT_SPLIT_PRES = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def transformers_tokenizer(gguf_path):
    """transformers' conversion; the metadata is read with PyPI gguf because transformers' own
    GGUF reader needs torch."""
    reader = gguf.GGUFReader(gguf_path)
    metadata = {key: f.contents() for key, f in reader.fields.items()
                if key.startswith("tokenizer.") or key == "general.architecture"}
    tokenizer_dict = {name: metadata[f"tokenizer.{key}"]
                      for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
                      if f"tokenizer.{key}" in metadata}
    backend, _ = convert_gguf_tokenizer(metadata["general.architecture"], tokenizer_dict)
    return backend, tokenizer_dict


def corpus(seed=1234):
    """Varied text segments, >= 200 KB in all."""
    rng = random.Random(seed)
    segments = []
    modules = ["argparse", "textwrap", "difflib", "json.decoder", "csv", "heapq", "fractions",
               "statistics", "calendar", "string", "dataclasses", "functools", "pathlib"]
    docstrings = []
    for name in modules:
        source = inspect.getsource(importlib.import_module(name))
        segments.append(source[:30000])
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    docstrings.append(doc)
    segments.append("\n\n".join(docstrings))
    with contextlib.redirect_stdout(io.StringIO()):
        import this  # the Zen of Python, printed on import
    segments.append("".join(this.d.get(c, c) for c in this.s))

    def numbers():
        parts = []
        for _ in range(3000):
            kind = rng.randrange(8)
            if kind == 0:
                parts.append(str(rng.randrange(10 ** rng.randrange(1, 12))))
            elif kind == 1:
                parts.append(f"{rng.uniform(-1e4, 1e4):.{rng.randrange(7)}f}")
            elif kind == 2:
                parts.append(f"{rng.randrange(1900, 2100)}-{rng.randrange(1, 13):02d}-"
                             f"{rng.randrange(1, 29):02d}")
            elif kind == 3:
                parts.append(f"+1 ({rng.randrange(200, 999)}) {rng.randrange(100, 999)}-"
                             f"{rng.randrange(1000, 9999)}")
            elif kind == 4:
                parts.append(f"{rng.random():.3e}")
            elif kind == 5:
                parts.append(f"v{rng.randrange(10)}.{rng.randrange(30)}.{rng.randrange(100)}")
            elif kind == 6:
                parts.append(hex(rng.randrange(1 << 32)))
            else:
                parts.append(f"x{rng.randrange(100)}y{rng.randrange(10)}")
            parts.append(rng.choice([" ", "  ", "   ", "\n", "\n\n ", "\t", ", ", " + ", "=",
                                     " \n  ", "\u00a0", ""]))
        return "".join(parts)

    def chars(ranges, count):
        out = []
        for _ in range(count):
            lo, hi = rng.choice(ranges)
            out.append(chr(rng.randrange(lo, hi + 1)))
            if rng.random() < 0.08:
                out.append(rng.choice([" ", "\n", "。", "、", "，", "！", "? ", " 12 "]))
        return "".join(out)

    segments.append(numbers())
    segments.append(chars([(0x4E00, 0x9FFF)], 12000))                      # CJK ideographs
    segments.append(chars([(0x3041, 0x3096), (0x30A1, 0x30FA)], 5000))     # kana
    segments.append(chars([(0xAC00, 0xD7A3)], 5000))                       # Hangul
    emoji = [(0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF),
             (0x2600, 0x26FF)]
    emoji_text = []
    for _ in range(3000):
        lo, hi = rng.choice(emoji)
        e = chr(rng.randrange(lo, hi + 1))
        r = rng.random()
        if r < 0.1:
            e += chr(rng.randrange(0x1F3FB, 0x1F400))             # skin tone
        elif r < 0.2:
            e += "\u200d" + chr(rng.randrange(0x1F300, 0x1F5FF))  # ZWJ sequence
        elif r < 0.25:
            e = chr(0x1F1E6 + rng.randrange(26)) + chr(0x1F1E6 + rng.randrange(26))  # flag
        emoji_text.append(e + rng.choice(["", " ", "  ", "\n", " ok ", "!"]))
    segments.append("".join(emoji_text))
    segments.append(chars([(0x0400, 0x04FF), (0x0600, 0x06FF), (0x0370, 0x03FF),
                           (0x00C0, 0x024F), (0x0900, 0x097F)], 8000))  # other scripts
    words = ("the of and to in is was that for on with as it by at from be this have or "
             "don't I'LL we've they'd it's caf\u00e9 na\u00efve r\u00e9sum\u00e9").split()
    ws = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\n  ", "    \n\n   ",
          "\u3000", "\u00a0", "\u2003", " \t \n"]
    segments.append("".join(rng.choice(words) + rng.choice(ws) for _ in range(6000)))
    chat = []
    for i in range(300):
        chat.append(f"<|im_start|>{rng.choice(['user', 'assistant', 'system'])}\n"
                    f"Message {i}: {rng.choice(words)} {rng.randrange(1000)}<|im_end|>\n")
    segments.append("".join(chat))
    return [s for s in segments if s]


def normalized_merges(model):
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def main():
    args = sys.argv[1:]
    if not args:
        gguf_path = os.environ.get("MILLIPEDE_SMOLLM2_GGUF")
        hf_dir = os.environ.get("MILLIPEDE_SMOLLM2_DIR")
        if not gguf_path or not hf_dir:
            fail("MILLIPEDE_SMOLLM2_GGUF and MILLIPEDE_SMOLLM2_DIR must be set "
                 "(scripts/fetch_default_model.sh)")
        args = [gguf_path, hf_dir]
    gguf_path, hf_dir = args
    ours = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    theirs, tokenizer_dict = transformers_tokenizer(gguf_path)

    # 1. Structure.
    ours_json = json.loads(ours.to_str())
    theirs_json = json.loads(theirs.to_str())
    if ours_json["model"]["vocab"] != theirs_json["model"]["vocab"]:
        fail("the vocabularies differ")
    if normalized_merges(ours_json["model"]) != normalized_merges(theirs_json["model"]):
        fail("the merges differ")
    keys = ("id", "content", "special", "normalized", "lstrip", "rstrip", "single_word")
    added = [{k: a[k] for k in keys} for a in ours_json["added_tokens"]]
    their_added = [{k: a[k] for k in keys} for a in theirs_json["added_tokens"]]
    if added != their_added:
        fail(f"the added tokens differ:\n ours   {added}\n theirs {their_added}")
    print(f"vocab ({len(ours_json['model']['vocab'])}), merges "
          f"({len(ours_json['model']['merges'])}) and added tokens ({len(added)}) are equal")

    # 2. Encoding.
    pre = tokenizer_dict.get("pre_tokenizer_type")
    theirs_with_rule = Tokenizer.from_str(theirs.to_str())
    if pre in DIGIT_SPLIT_PRES:
        theirs_with_rule.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    segments = corpus()
    total = sum(len(s.encode("utf-8")) for s in segments)
    if total < 200_000:
        fail(f"the corpus has only {total} bytes")
    pieces = []
    for s in segments:  # paragraphs as well as whole segments: more starts and ends
        pieces.append(s)
        pieces.extend(p for p in s.split("\n\n") if p)
    pieces.append("".join(segments))
    digit_free = 0
    plain_differs = 0
    tokens = 0
    for text in pieces:
        ids = ours.encode(text).ids
        tokens += len(ids)
        if NUMBER.search(text) is None:
            digit_free += 1
            want = theirs.encode(text).ids
            if ids != want:
                fail(f"digit-free text encodes differently from transformers: {text[:80]!r}")
        want = theirs_with_rule.encode(text).ids
        if ids != want:
            first = next(i for i, (a, b) in enumerate(zip(ids + [-1], want + [-1])) if a != b)
            fail(f"text encodes differently (first at token {first}): {text[:80]!r}")
        if theirs.encode(text).ids != ids:
            plain_differs += 1
        if ours.decode(ids, skip_special_tokens=False) != text:
            fail(f"decoding does not give the text back: {text[:80]!r}")
    print(f"{len(pieces)} texts ({total} bytes in the segments, {tokens} tokens) encode the same "
          f"({digit_free} digit-free ones also with transformers' plain conversion, which differs "
          f"on {plain_differs} texts with digits)")


if __name__ == "__main__":
    main()
