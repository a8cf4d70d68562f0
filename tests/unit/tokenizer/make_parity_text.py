#!/usr/bin/env python3
"""Deterministic, varied text for the tokenizer parity tests and the tokenizer benchmark.

generate(seed, min_bytes) returns a list of documents (str) whose UTF-8 size is at least
min_bytes: English prose (docstrings of the Python standard library), Python source code,
Chinese, Japanese, Korean, Cyrillic, Arabic and other scripts, emoji (ZWJ sequences, skin tones,
flags, keycaps), combining marks in NFD and in non-canonical order, compatibility characters,
digits and long numbers, contractions in mixed case, whitespace runs of every kind, special-token
strings embedded in text, and invalid-looking sequences (U+FFFD, private use, noncharacters,
controls, unassigned planes). Only characters assigned in old Unicode versions (or in planes that
are still unassigned) are generated, so the Unicode tables of different libraries agree.

Usage: make_parity_text.py --out FILE [--seed N] [--min-bytes N]
    writes the documents joined by blank lines (the benchmark's input).
"""

import argparse
import ast
import os
import random
import sysconfig
import unicodedata

# Added-token strings of both target vocabularies (Qwen2.5 and SmolLM2).
SPECIAL_STRINGS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
    "<repo_name>", "<reponame>", "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>",
    "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
    "<jupyter_output>", "<jupyter_script>", "<empty_output>",
]
NEAR_SPECIAL = [
    "<|im_start", "im_end|>", "<|endoftext|", "<|IM_START|>", "< |im_end|>", "<<|im_end|>>",
    "<|im_end|><|im_end|>", "<|<|im_start|>|>", "<think", "</think", "<|", "|>", "<>", "</>",
    "<|im_start|>>", "<tool_call></tool_call>", "<|endoftext|>\u0301",
]
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", "\u00a0", "\u3000", "\u2003", "\u200b",
              "\u180e", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\u2028",
              "\u2029", "\u202f", "\u205f", "\u1680", " \n", "   \n", "\t\n", " \r\n"]
CONTRACTION_WORDS = ["I", "you", "he", "she", "it", "we", "they", "that", "there", "who", "what",
                     "John", "don", "can", "won", "isn", "didn", "Ma", "rock", "o"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "\u2019s", "\u2019ll", "'", "''s",
                "'S", "'LL", "'Re", "'vE", "'D", "'M", "'T", "'\u017f", "'\u212a", "'sS", "'lL"]
CJK_PUNCT = "，。！？、：；「」『』（）《》……——"
EMOJI_RANGES = [(0x1F600, 0x1F64F), (0x1F300, 0x1F3FA), (0x1F400, 0x1F4FC), (0x2600, 0x26FF)]
SKIN_TONES = [chr(c) for c in range(0x1F3FB, 0x1F400)]
HAND_EMOJI = [chr(c) for c in range(0x1F446, 0x1F451)] + ["\u270b", "\u270c"]
ZWJ_SEQUENCES = [
    "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466",
    "\U0001F469\u200d\u2764\ufe0f\u200d\U0001F48B\u200d\U0001F468",
    "\U0001F3F3\ufe0f\u200d\U0001F308", "\U0001F441\ufe0f\u200d\U0001F5E8\ufe0f",
    "\U0001F468\U0001F3FD\u200d\U0001F4BB", "\U0001F9D1\u200d\U0001F680",
]
COMPAT = ["\ufb01", "\ufb02", "\uff21\uff22\uff23", "\uff11\uff12\uff13", "\u2460", "\u00b2",
          "\u2103", "\u212b", "\u2126", "\u212a", "\u00bd", "\u2167", "\u2160\u2161",
          "\u1e9b\u0323", "\u0344", "\u0374", "\u037e", "\u0387", "\u1f71", "\u2000", "\u2001",
          "\u3099", "\u309b", "\u304b\u3099", "\u30cf\u309a", "\uf900", "\U0002f800"]
LATIN_ACCENTED = ("àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿāăąćĉċčďđēĕ"
                  "ėęěĝğġģĥħĩīĭįıĵķĺļľŀłńņňŉŋōŏőœŕŗřśŝşšţťŧũūŭůűųŵŷźżž")
VIETNAMESE = ["Tiếng Việt", "người", "được", "những", "chữ quốc ngữ", "Hà Nội", "phở bò",
              "trường học", "cảm ơn", "xin chào"]


def _chars(a, b):
    return [chr(c) for c in range(a, b + 1) if unicodedata.category(chr(c)) != "Cn"]


HIRAGANA = _chars(0x3041, 0x3093)
KATAKANA = _chars(0x30A1, 0x30F6)
HANGUL = [chr(c) for c in range(0xAC00, 0xD7A4)]
CYRILLIC_LOWER = _chars(0x0430, 0x044F) + ["ё"]
CYRILLIC_UPPER = _chars(0x0410, 0x042F)
ARABIC = _chars(0x0621, 0x063A) + _chars(0x0641, 0x064A)
ARABIC_MARKS = _chars(0x064B, 0x0652)
GREEK = _chars(0x03B1, 0x03C9) + _chars(0x0391, 0x03A9)
HEBREW = _chars(0x05D0, 0x05EA)
DEVANAGARI = _chars(0x0915, 0x0939)
DEVANAGARI_MARKS = _chars(0x093E, 0x094D)
THAI = _chars(0x0E01, 0x0E2E)
THAI_MARKS = _chars(0x0E31, 0x0E3A) + _chars(0x0E47, 0x0E4E)
COMBINING = _chars(0x0300, 0x036F) + ["\u0323", "\u0328", "\u0331", "\u20d7", "\u1dc0"]
OTHER_DIGITS = [_chars(0x0660, 0x0669), _chars(0x06F0, 0x06F9), _chars(0x0966, 0x096F),
                _chars(0xFF10, 0xFF19), _chars(0x0E50, 0x0E59), _chars(0x2070, 0x2079),
                _chars(0x2080, 0x2089), _chars(0x2150, 0x215F), _chars(0x2160, 0x216F)]
ODD = (["\ufffd", "\ufeff", "\u202e", "\u2066", "\u2069", "\u200d", "\u200c", "\ufe0f", "\ufe0e",
        "\ufdd0", "\ufffe", "\uffff", "\U0001fffe", "\U0010ffff", "\U000e0001", "\U000e0041",
        "\x7f", "\x00", "\x01", "\x04", "\x06", "\x08", "\x13", "\x14", "\x16", "\x1b", "\u0080",
        "\u0090", "\u009f", "\U00010000", "\U00010330", "\U0001d400", "\U0001d11e", "\U00020000",
        "\U0002a6d6", "\\xff\\xfe", "%C3%28", "\\ud800", "&#xD800;", "\\u0000", "\u00ad",
        "\u034f", "\u115f", "\u3164"]
       + [chr(c) for c in (0xE000, 0xE123, 0xF8FF, 0xF0000, 0xFFFFD, 0x100000, 0x10FFFD)]
       + [chr(c) for c in (0x40000, 0x5ABCD, 0x7FFFF, 0x80000, 0x9ABCD, 0xBFFFF)])


def _word(rng, alphabet, lo=1, hi=8):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _stdlib_files(rng):
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for sub in ["", "json", "email", "http", "asyncio", "unittest", "xml/dom", "concurrent/futures",
                "importlib", "logging", "urllib", "collections", "multiprocessing", "sqlite3"]:
        d = os.path.join(root, sub)
        if os.path.isdir(d):
            files += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".py"))
    rng.shuffle(files)
    return files


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def prose_docs(rng, budget):
    """English prose: docstrings of modules, classes and functions of the standard library."""
    docs, total = [], 0
    for path in _stdlib_files(rng):
        try:
            tree = ast.parse(_read(path))
        except (SyntaxError, ValueError):
            continue
        parts = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=rng.random() < 0.5)
                if doc and len(doc) > 40:
                    parts.append(doc)
        if parts:
            text = "\n\n".join(parts)[: rng.randint(2000, 12000)]
            docs.append(text)
            total += len(text.encode())
        if total >= budget:
            break
    return docs


def code_docs(rng, budget):
    """Python source code: slices of standard-library modules."""
    docs, total = [], 0
    for path in _stdlib_files(rng):
        src = _read(path)
        if len(src) < 500:
            continue
        start = rng.randint(0, max(0, len(src) - 4000))
        text = src[start:start + rng.randint(1500, 9000)]
        docs.append(text)
        total += len(text.encode())
        if total >= budget:
            break
    return docs


def cjk_sentence(rng):
    out = []
    for _ in range(rng.randint(3, 25)):
        r = rng.random()
        if r < 0.8:
            out.append(_word(rng, [chr(rng.randint(0x4E00, 0x62FF)) for _ in range(8)]
                             + [chr(rng.randint(0x4E00, 0x9FA5))], 1, 4))
        elif r < 0.9:
            out.append(rng.choice(CJK_PUNCT))
        elif r < 0.95:
            out.append(str(rng.randint(0, 10 ** rng.randint(1, 6))))
        else:
            out.append(rng.choice([" ", "Python", "AI", "GPU", " 2024年", "（注）"]))
    return "".join(out) + rng.choice(["。", "！", "？", "\n"])


def japanese_sentence(rng):
    out = []
    for _ in range(rng.randint(3, 20)):
        r = rng.random()
        if r < 0.45:
            out.append(_word(rng, HIRAGANA, 1, 5))
        elif r < 0.75:
            out.append(_word(rng, KATAKANA, 2, 6) + rng.choice(["", "ー", "ッ"]))
        elif r < 0.93:
            out.append(_word(rng, [chr(rng.randint(0x4E00, 0x7FFF)) for _ in range(5)], 1, 3))
        else:
            out.append(rng.choice("、「」・"))
    return "".join(out) + rng.choice(["。", "！", "\n"])


def korean_sentence(rng):
    words = [_word(rng, HANGUL, 1, 5) for _ in range(rng.randint(3, 15))]
    return " ".join(words) + rng.choice([".", "?", "!", "。", "\n"])


def alphabet_sentence(rng, letters, marks=None, mark_rate=0.0, capital=None):
    words = []
    for _ in range(rng.randint(3, 18)):
        w = []
        for _ in range(rng.randint(1, 9)):
            w.append(rng.choice(letters))
            if marks and rng.random() < mark_rate:
                w.append(rng.choice(marks))
        w = "".join(w)
        if capital and rng.random() < 0.15:
            w = rng.choice(capital) + w
        words.append(w)
    sep = rng.choice([" ", " ", " ", ", ", " - "])
    return sep.join(words) + rng.choice([".", "!", "?", "؟", "،", "\n", ";"])


def emoji_run(rng):
    out = []
    for _ in range(rng.randint(1, 12)):
        r = rng.random()
        if r < 0.4:
            a, b = rng.choice(EMOJI_RANGES)
            c = chr(rng.randint(a, b))
            out.append(c + ("\ufe0f" if a == 0x2600 and rng.random() < 0.5 else ""))
        elif r < 0.6:
            out.append(rng.choice(HAND_EMOJI) + rng.choice(SKIN_TONES))
        elif r < 0.75:
            out.append(rng.choice(ZWJ_SEQUENCES))
        elif r < 0.85:
            out.append(chr(rng.randint(0x1F1E6, 0x1F1FF)) + chr(rng.randint(0x1F1E6, 0x1F1FF)))
        elif r < 0.92:
            out.append(rng.choice("0123456789#*") + "\ufe0f\u20e3")
        else:
            out.append(rng.choice([" ", "!", "  ", "\n", "lol", "ok"]))
    return "".join(out)


def combining_text(rng):
    """NFD text, marks out of canonical order, Hangul jamo, compatibility characters."""
    out = []
    for _ in range(rng.randint(3, 15)):
        r = rng.random()
        if r < 0.3:
            w = "".join(rng.choice(LATIN_ACCENTED + "abcdefghijklmnopqrstuvwxyz")
                        for _ in range(rng.randint(2, 9)))
            if rng.random() < 0.5:
                w = w.upper()
            out.append(unicodedata.normalize(rng.choice(["NFD", "NFD", "NFC"]), w))
        elif r < 0.5:
            base = rng.choice("aeiouAEIOUnscyzqxαβωиЖ")
            out.append(base + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 4))))
        elif r < 0.62:
            jamo = chr(rng.randint(0x1100, 0x1112)) + chr(rng.randint(0x1161, 0x1175))
            if rng.random() < 0.5:
                jamo += chr(rng.randint(0x11A8, 0x11C2))
            out.append(jamo)
        elif r < 0.75:
            out.append(unicodedata.normalize(rng.choice(["NFD", "NFC"]), rng.choice(VIETNAMESE)))
        elif r < 0.9:
            out.append(rng.choice(COMPAT))
        else:
            out.append(rng.choice(COMBINING))  # a mark with no base, maybe after a space
    return rng.choice([" ", "", "-"]).join(out) + rng.choice([".", "\n", " "])


def number_text(rng):
    out = []
    for _ in range(rng.randint(3, 12)):
        r = rng.random()
        if r < 0.25:
            out.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 60))))
        elif r < 0.4:
            out.append(f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 9)}f}")
        elif r < 0.5:
            out.append(f"{rng.randint(0, 10**12):,}")
        elif r < 0.58:
            a, b, c = rng.randint(100, 999), rng.randint(100, 999), rng.randint(0, 9999)
            out.append(f"+1 ({a}) {b}-{c:04d}")
        elif r < 0.65:
            y, m, d = rng.randint(1900, 2100), rng.randint(1, 12), rng.randint(1, 28)
            out.append(f"{y}-{m:02d}-{d:02d}")
        elif r < 0.72:
            out.append(hex(rng.getrandbits(rng.randint(8, 128))))
        elif r < 0.78:
            out.append(f"{rng.uniform(0, 10):.3e}")
        elif r < 0.86:
            out.append(_word(rng, "abcxyz") + str(rng.randint(0, 99999)) + _word(rng, "defuvw"))
        else:
            digits = rng.choice(OTHER_DIGITS)
            out.append("".join(rng.choice(digits) for _ in range(rng.randint(1, 8))))
    return rng.choice([" ", ", ", "\n", "\t", " = "]).join(out)


def contraction_text(rng):
    out = []
    for _ in range(rng.randint(3, 15)):
        w = rng.choice(CONTRACTION_WORDS)
        w = rng.choice([w, w.upper(), w.lower(), w.capitalize()])
        out.append(w + rng.choice(CONTRACTIONS))
    return " ".join(out) + rng.choice([".", "!", "\n", "?'"])


def whitespace_text(rng):
    out = []
    for _ in range(rng.randint(3, 20)):
        r = rng.random()
        if r < 0.5:
            out.append(_word(rng, "abcdefghij.,;()_-'", 1, 8))
        elif r < 0.85:
            out.append("".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 6))))
        elif r < 0.95:
            out.append(rng.choice([" ", "\t", "\n", "\r\n", "\u3000"]) * rng.randint(5, 300))
        else:
            out.append("   \n" * rng.randint(1, 5))
    return "".join(out)


def special_text(rng):
    out = []
    for _ in range(rng.randint(3, 14)):
        r = rng.random()
        if r < 0.45:
            out.append(rng.choice(SPECIAL_STRINGS))
        elif r < 0.6:
            out.append(rng.choice(NEAR_SPECIAL))
        elif r < 0.75:
            out.append(rng.choice(["user", "assistant", "system", "hello", "foo", "Ａ", "é"]))
        else:
            out.append(rng.choice([" ", "\n", "", "  ", "\u0301", "\u00a0", "x", "1", "'s"]))
    return "".join(out)


def odd_text(rng):
    out = []
    for _ in range(rng.randint(3, 14)):
        r = rng.random()
        if r < 0.6:
            out.append(rng.choice(ODD))
        else:
            out.append(rng.choice([" ", "a", "word", "\n", "1", "\u0301", "'s", "。"]))
    return "".join(out)


SENTENCE_MAKERS = [
    cjk_sentence, japanese_sentence, korean_sentence,
    lambda rng: alphabet_sentence(rng, CYRILLIC_LOWER, capital=CYRILLIC_UPPER),
    lambda rng: alphabet_sentence(rng, ARABIC, ARABIC_MARKS, 0.3),
    lambda rng: alphabet_sentence(rng, GREEK),
    lambda rng: alphabet_sentence(rng, HEBREW),
    lambda rng: alphabet_sentence(rng, DEVANAGARI, DEVANAGARI_MARKS, 0.5),
    lambda rng: alphabet_sentence(rng, THAI, THAI_MARKS, 0.4),
    emoji_run, combining_text, number_text, contraction_text, whitespace_text, special_text,
    odd_text,
]


def generated_docs(rng, budget, makers):
    docs, total = [], 0
    while total < budget:
        maker = rng.choice(makers)
        parts = []
        size = rng.randint(200, 6000)
        while sum(len(p) for p in parts) < size:
            # Mostly one kind per document, sometimes a soup of all kinds.
            m = maker if rng.random() < 0.7 else rng.choice(SENTENCE_MAKERS)
            parts.append(m(rng))
            parts.append(rng.choice([" ", "\n", "", "\n\n", "  "]))
        text = "".join(parts)
        docs.append(text)
        total += len(text.encode())
    return docs


def generate(seed=20240611, min_bytes=1_100_000):
    """The parity documents: about 30% prose, 25% code, 45% generated multilingual and edge text."""
    rng = random.Random(seed)
    docs = prose_docs(rng, min_bytes * 0.30)
    docs += code_docs(rng, min_bytes * 0.25)
    docs += generated_docs(rng, min_bytes * 0.45, SENTENCE_MAKERS)
    while sum(len(d.encode()) for d in docs) < min_bytes:
        docs += generated_docs(rng, 50_000, SENTENCE_MAKERS)
    rng.shuffle(docs)
    return docs


def long_run_docs(rng, length=60_000):
    """Long uniform runs: single pre-tokens far longer than any cache entry."""
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length))
    return ["a" * length, letters, " " * length, "\n " * (length // 2), "7" * length,
            "\u4e2d" * (length // 3), "\U0001F600" * (length // 4), "e" + "\u0301" * (length // 2),
            "ab" * (length // 2), "!" * length, "\t" * length + "x", "\r\n" * (length // 2)]


def added_flag_docs(rng, contents, count=400):
    """Documents exercising added tokens with lstrip / rstrip / single_word / normalized."""
    neighbours = ["", " ", "  ", "\t", "\n", " \n ", "a", "Z", "_", "9", "é", "e\u0301", "中", ".",
                  "-", "\u00a0", "\u3000", "'s", "<", ">"]
    docs = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 8)):
            c = rng.choice(contents)
            if rng.random() < 0.3:
                c = unicodedata.normalize(rng.choice(["NFD", "NFC"]), c)
            parts += [rng.choice(neighbours), c, rng.choice(neighbours)]
            if rng.random() < 0.3:
                parts.append(rng.choice(SENTENCE_MAKERS)(rng)[:40])
        docs.append("".join(parts))
    return docs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--min-bytes", type=int, default=1_100_000)
    args = parser.parse_args()
    docs = generate(args.seed, args.min_bytes)
    with open(args.out, "w", encoding="utf-8", newline="") as f:
        f.write("\n\n".join(docs))
    print(args.out)


if __name__ == "__main__":
    main()
