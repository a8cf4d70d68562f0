#!/usr/bin/env python3
"""Token-id parity between mp::Tokenizer (through tokenize_tool) and the `tokenizers` library.

  tokenizer_parity.py --tool PATH/tokenize_tool --vocab qwen|smollm2|qwen_added_flags

Vocabularies:
  qwen              $MILLIPEDE_QWEN_TOKENIZER (the tokenizer.json printed by
                    fetch_qwen_tokenizer.sh)
  smollm2           $MILLIPEDE_SMOLLM2_DIR/tokenizer.json (the converted SmolLM2 model)
  qwen_added_flags  the Qwen file with added tokens given lstrip / rstrip / single_word /
                    normalized flags, and new added tokens, on text built around them

Checks, all exact: the ids of every document of make_parity_text.generate() (>= 1 MB), of
their concatenation and of long uniform runs (encode(text, add_special_tokens=False)); decode
with and without skip_special_tokens, and the streaming decoder, on the encoded documents and on
random id sequences. The first mismatch is reported with its context. A missing environment
variable or file is a failure, not a skip.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_parity_text  # noqa: E402


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def resolve_tokenizer(vocab):
    if vocab in ("qwen", "qwen_added_flags"):
        var = "MILLIPEDE_QWEN_TOKENIZER"
        value = os.environ.get(var)
        if not value:
            fail(f"{var} is not set; set it to the output of "
                 "tests/unit/tokenizer/fetch_qwen_tokenizer.sh")
        path = value
    else:
        var = "MILLIPEDE_SMOLLM2_DIR"
        value = os.environ.get(var)
        if not value:
            fail(f"{var} is not set; set it to the converted SmolLM2 model directory "
                 "(millipede convert-gguf, see scripts/test.sh)")
        path = os.path.join(value, "tokenizer.json")
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        fail(f"{path} (from {var}) does not exist")
    return path


def added_flags_variant(path, workdir):
    """Qwen's tokenizer.json with flagged added tokens; returns (path, contents to embed)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    flags = {
        "<|im_start|>": {"lstrip": True, "rstrip": True},
        "<|im_end|>": {"single_word": True},
        "<|endoftext|>": {"lstrip": True},
        "<tool_call>": {"normalized": True},
        "</tool_call>": {"rstrip": True, "normalized": True},
        "<think>": {"single_word": True, "lstrip": True, "normalized": True},
    }
    for token in data["added_tokens"]:
        token.update(flags.get(token["content"], {}))
    next_id = max(t["id"] for t in data["added_tokens"]) + 1
    new_tokens = [
        ("Cafe\u0301z", {"normalized": True}),            # NFD content, matched after NFC
        ("qzqz", {"single_word": True, "normalized": False}),
        ("zz\u00e9x", {"normalized": True, "rstrip": True}),
        ("[SEP]", {"lstrip": True, "rstrip": True, "normalized": False, "special": True}),
        ("\u00c5ngstrom", {"normalized": False}),
    ]
    for content, extra in new_tokens:
        entry = {"id": next_id, "content": content, "single_word": False, "lstrip": False,
                 "rstrip": False, "normalized": True, "special": False}
        entry.update(extra)
        data["added_tokens"].append(entry)
        next_id += 1
    out = os.path.join(workdir, "tokenizer_added_flags.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    return out, list(flags) + [c for c, _ in new_tokens] + ["Caf\u00e9z", "\u212bngstrom"]


def run_tool(tool, mode, tokenizer_path, payload, workdir):
    in_path = os.path.join(workdir, f"{mode}_in.json")
    out_path = os.path.join(workdir, f"{mode}_out.json")
    with open(in_path, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False)
    proc = subprocess.run([tool, mode, tokenizer_path, in_path, out_path],
                          capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        fail(f"tokenize_tool {mode} exited with {proc.returncode}")
    with open(out_path, encoding="utf-8") as f:
        return json.load(f)


def report_encode_mismatch(tok, index, doc, expected, got):
    k = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b),
             min(len(expected), len(got)))
    enc = tok.encode(doc, add_special_tokens=False)
    char = enc.offsets[k][0] if k < len(enc.offsets) else len(doc)
    lo, hi = max(0, k - 5), k + 6
    lines = [
        f"document {index}: first mismatch at token {k} "
        f"(expected {len(expected)} tokens, got {len(got)})",
        f"  text around character {char}: {doc[max(0, char - 40):char + 40]!r}",
        f"  expected ids {expected[lo:hi]} = {[tok.id_to_token(i) for i in expected[lo:hi]]}",
        f"  got ids      {got[lo:hi]} = "
        f"{[tok.id_to_token(i) if 0 <= i < tok.get_vocab_size() else i for i in got[lo:hi]]}",
    ]
    fail("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tool", required=True)
    parser.add_argument("--vocab", required=True, choices=["qwen", "smollm2", "qwen_added_flags"])
    parser.add_argument("--min-bytes", type=int, default=1_100_000)
    args = parser.parse_args()

    try:
        from tokenizers import Tokenizer
    except ImportError:
        fail("the Python package `tokenizers` is not installed (pip install tokenizers)")

    path = resolve_tokenizer(args.vocab)
    with tempfile.TemporaryDirectory(prefix="mp_tok_parity_") as workdir:
        rng = random.Random(7)
        if args.vocab == "qwen_added_flags":
            path, contents = added_flags_variant(path, workdir)
            docs = make_parity_text.added_flag_docs(rng, contents, count=3000)
        else:
            docs = make_parity_text.generate(min_bytes=args.min_bytes)
            docs.append("".join(docs))  # one long input as well
            docs += make_parity_text.long_run_docs(rng)
        tok = Tokenizer.from_file(path)
        total_bytes = sum(len(d.encode()) for d in docs)
        print(f"{args.vocab}: {path}, {len(docs)} documents, {total_bytes} bytes")

        start = time.time()
        expected = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
        print(f"tokenizers encode: {time.time() - start:.2f} s")
        got = run_tool(args.tool, "encode", path, docs, workdir)
        if len(got) != len(docs):
            fail(f"tokenize_tool returned {len(got)} results for {len(docs)} documents")
        for i, (doc, e, g) in enumerate(zip(docs, expected, got)):
            if e != g:
                report_encode_mismatch(tok, i, doc, e, g)
        n_tokens = sum(len(e) for e in expected)
        print(f"encode: {len(docs)} documents, {n_tokens} tokens identical")

        # Decode: encoded documents (at most 200, to keep the test fast) and random ids.
        vocab_size = tok.get_vocab_size()
        sequences = [e[:4000] for e in expected[:200]]
        for _ in range(3000):
            length = rng.randint(1, 24)
            sequences.append([rng.randrange(vocab_size) for _ in range(length)])
        special_ids = sorted(tok.get_added_tokens_decoder())
        for _ in range(300):
            sequences.append([rng.choice(special_ids) if rng.random() < 0.4
                              else rng.randrange(vocab_size) for _ in range(rng.randint(1, 10))])
        decoded = run_tool(args.tool, "decode", path, sequences, workdir)
        for key, skip in [("text", False), ("text_skip_special", True),
                          ("stream", False), ("stream_skip_special", True)]:
            for i, ids in enumerate(sequences):
                want = tok.decode(ids, skip_special_tokens=skip)
                if decoded[key][i] != want:
                    fail(f"decode ({key}) of sequence {i} {ids[:30]}: "
                         f"expected {want[:200]!r}, got {decoded[key][i][:200]!r}")
        print(f"decode: {len(sequences)} sequences identical "
              "(with and without skip_special, one-shot and streaming)")
    print("PASS")


if __name__ == "__main__":
    main()
