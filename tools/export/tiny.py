"""Tiny random-weight models of the real architectures, with small trained tokenizers of the same type.

Used for committed test fixtures (--tiny-random) and, at realistic width, for benchmarks (--random-config).
"""

from __future__ import annotations

import json

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPVisionConfig, LlamaConfig, Qwen2Config, SiglipVisionConfig

from llava_model import LlavaModel, LlavaSpec
from prompts import CONVERSATION_FORMATS, CRITERIA, INSTRUCTION_TEMPLATE, number_token_texts

# Qwen2's pre-tokenizer split (digits one by one via \p{N}), as in its tokenizer.json.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama-3's pre-tokenizer split (its tokenizer.json): digit runs in groups of up to three (\p{N}{1,3}), so a number
# never joins the space before it and 0..999 are single tokens.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
]

CAPTION_CORPUS = [
    "A brown dog running on the beach at sunset.",
    "Two children playing football in a green park.",
    "A red car parked in front of an old brick building.",
    "Close-up of a cup of coffee on a wooden table.",
    "Mountains covered with snow under a clear blue sky.",
    "A woman riding a bicycle through the city streets.",
    "Fresh vegetables for sale at a farmers market.",
    "A cat sleeping on a sofa next to a window.",
    "Aerial view of a river winding through a forest.",
    "The Eiffel Tower lit up at night in Paris, France.",
    "A plate of spaghetti with tomato sauce and basil.",
    "Stock photo: businessman shaking hands in an office.",
    "Vintage poster of a 1950s jazz festival in New Orleans.",
    "Buy now! 50% off all shoes, free shipping over $30.",
    "IMG_2041.jpg",
    "A bird perched on a branch, singing in the morning.",
    "Tokyo street at night with neon signs and people walking.",
    "Un café au lait et un croissant sur une terrasse à Paris.",
    "Ein großer Hund spielt im Schnee.",
    "东京的夜景，街道上有很多人。",
    "A small boat floating on a calm lake.",
    "Portrait of an elderly man wearing a hat and glasses.",
    "Sunflowers in a field, yellow petals and green leaves.",
    "The 3 kittens are playing with 2 balls of yarn.",
    "Score: 87 out of 100 for this photo of a bridge.",
]


def training_corpus() -> list[str]:
    texts = list(CAPTION_CORPUS)
    for metric, criteria in CRITERIA.items():
        texts.append(INSTRUCTION_TEMPLATE.replace("{criteria}", criteria).replace("{aspect}", metric.replace("_", " ")))
    texts += [
        "You are a helpful assistant",
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: ASSISTANT:",
        CONVERSATION_FORMATS["llama_3"].replace("{user_turn}", ""),
    ]
    texts += [" ".join(str(i) for i in range(0, 101))]
    return texts


def train_qwen_tokenizer(vocab_size: int = 1200) -> Tokenizer:
    """Byte-level BPE with Qwen2's normalizer, split regex, decoder; specials appended after the BPE vocab."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(training_corpus(), trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return tok


def train_llama3_tokenizer(vocab_size: int = 1100) -> Tokenizer:
    """Byte-level BPE in Llama-3's tokenizer.json layout: its split regex, ByteLevel without its own regex,
    ignore_merges, BOS <|begin_of_text|> added by the post-processor, and, as in Llama-3's vocabulary, every digit
    string of one to three digits ("0".."9", "00".."99", "000".."999") as one token."""
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(training_corpus(), trainer)
    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    have = set(merges)

    def add(a: str, b: str) -> None:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
        if (a, b) not in have:
            merges.append((a, b))
            have.add((a, b))

    digits = "0123456789"
    for a in digits:
        for b in digits:
            add(a, b)
    # Either pair of a three-digit run may merge first; both orders end in the one token.
    for a in digits:
        for b in digits:
            for c in digits:
                add(a + b, c)
                add(a, b + c)
    spec["model"]["merges"] = [list(m) for m in merges]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens(LLAMA3_SPECIALS)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, tok.token_to_id(bos))],
            ),
        ]
    )
    for text in number_token_texts():
        if tok.encode(text, add_special_tokens=False).ids != [tok.token_to_id(text)]:
            raise RuntimeError(f"tiny Llama-3 tokenizer: {text!r} is not one token")
    return tok


def train_llama_tokenizer(vocab_size: int = 1200) -> Tokenizer:
    """Sentencepiece-style BPE (LLaMA's tokenizer.json layout): '▁' prefix, byte fallback, digits split."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # Training-time split only: words start at '▁' and digits stand alone. LLaMA's tokenizer.json has no
    # pre-tokenizer; with merges learned this way, inference without one gives the same pieces.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("▁", behavior="merged_with_next"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
        initial_alphabet=list("▁0123456789"),
        show_progress=False,
    )
    # LLaMA's vocabulary has no newline piece: '\n' goes through byte fallback (<0x0A>). Keep it out of training.
    tok.train_from_iterator([t.replace("\n", " ") for t in training_corpus()], trainer)
    spec = json.loads(tok.to_str())
    # Byte tokens are ordinary vocabulary entries in LLaMA's file, not added tokens that would match literal text.
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["content"] in ("<unk>", "<s>", "</s>")]
    spec["pre_tokenizer"] = None
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<s>", "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    return Tokenizer.from_str(json.dumps(spec))


def tokenizer_config(family: str, tok: Tokenizer, conv_format: str | None = None) -> dict:
    if conv_format == "llama_3":
        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "pad_token": "<|finetune_right_pad_id|>",
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 131072,
            "clean_up_tokenization_spaces": True,
        }
    if family == "llava_qwen":
        return {
            "tokenizer_class": "Qwen2Tokenizer",
            "add_bos_token": False,
            "add_prefix_space": False,
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "model_max_length": 32768,
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": False,
            "errors": "replace",
        }
    return {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "legacy": True,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }


# -- generation_config.json (GEN, issue 19) ------------------------------------------------------------------------


def generation_config(family: str, tok: Tokenizer) -> dict:
    """generation_config.json for the tiny checkpoints, shaped like the released LMs' files: Qwen2.5-1.5B-Instruct's
    (eos [<|im_end|>, <|endoftext|>], repetition_penalty 1.1, sampling settings that greedy decoding ignores) and
    Vicuna/LLaVA-1.5's (eos </s>, no penalty). The reference's generate(do_sample=False) applies the penalty and eos."""
    if family == "llava_qwen":
        pad = tok.token_to_id("<|endoftext|>")
        return {
            "bos_token_id": pad,
            "pad_token_id": pad,
            "eos_token_id": [tok.token_to_id("<|im_end|>"), pad],
            "do_sample": True,
            "repetition_penalty": 1.1,
            "temperature": 0.7,
            "top_p": 0.8,
            "top_k": 20,
        }
    return {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_length": 4096, "temperature": 0.9, "top_p": 0.6}


def llama3_generation_config(tok: Tokenizer) -> dict:
    """generation_config.json shaped like Llama-3(.2) Instruct's: eos <|end_of_text|> and <|eot_id|>, sampling settings
    that greedy decoding ignores, no repetition penalty."""
    return {
        "bos_token_id": tok.token_to_id("<|begin_of_text|>"),
        "eos_token_id": [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")],
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.9,
    }


def digit_ids(tok: Tokenizer) -> list[int]:
    ids = [tok.token_to_id(str(d)) for d in range(10)]
    if any(i is None for i in ids):
        raise RuntimeError(f"tiny tokenizer lacks single-digit tokens: {ids}")
    return ids


def tiny_model(family: str, tok: Tokenizer, seed: int = 0) -> LlavaModel:
    torch.manual_seed(seed)
    vocab = tok.get_vocab_size()
    if family == "llava_qwen":
        vision = SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
        )
        lm = Qwen2Config(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=tok.token_to_id("<|im_end|>"),
            pad_token_id=tok.token_to_id("<|endoftext|>"),
        )
        spec = LlavaSpec("llava_qwen", "qwen_instruct", "aapool_mlp", -1, "patch", 4, True)
    else:
        vision = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
            projection_dim=32,
        )
        lm = LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        spec = LlavaSpec("llava_llama", "llava_v1", "mlp2x_gelu", -2, "patch", 16, True)
    vision._attn_implementation = "eager"
    lm._attn_implementation = "eager"
    model = LlavaModel(spec, vision, lm)
    # HF init draws weights with std 0.02: everything stays near-uniform. Wider weights make the logits depend
    # visibly on the image and the caption, so parity tests can tell inputs apart.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3 / max(1.0, p.shape[-1] ** 0.5) * 4)
    model.eval()
    calibrate_digits(model, tok)
    return model


def tiny_llama3_model(tok: Tokenizer, variant: str, seed: int = 0) -> LlavaModel:
    """Tiny llava_llama models with the Llama-3 LMs' features. variant 'llama3' (Llama-3-8B: GQA 4 query heads per KV
    head as 32/8, rope theta 500000, untied lm_head; CLIP tower, mlp2x_gelu) or 'llama3.2' (Llama-3.2-3B: 3 per KV head
    as 24/8, `llama3` rope scaling, tied embeddings; SigLIP tower, linear projector). The rope scaling's
    original_max_position_embeddings is 64 here (8192 in the real model) so that it changes the frequencies the tiny
    head dimension has: with 16 dims and theta 500000 the wavelengths run 6.3 .. 2.5e5 positions."""
    torch.manual_seed(seed)
    specials = {t: tok.token_to_id(t) for t in LLAMA3_SPECIALS}
    common = dict(
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=4096,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        bos_token_id=specials["<|begin_of_text|>"],
        eos_token_id=[specials["<|end_of_text|>"], specials["<|eot_id|>"]],
        pad_token_id=None,
    )
    if variant == "llama3":
        vision = CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
            patch_size=14, projection_dim=32,
        )
        lm = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
            tie_word_embeddings=False, **common,
        )
        spec = LlavaSpec("llava_llama", "llama_3", "mlp2x_gelu", -2, "patch", 16, True)
    elif variant == "llama3.2":
        vision = SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
        )
        lm = LlamaConfig(
            hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
            head_dim=16, tie_word_embeddings=True,
            rope_scaling={
                "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            **common,
        )
        spec = LlavaSpec("llava_llama", "llama_3", "linear", -1, "patch", 16, True)
    else:
        raise ValueError(f"unknown Llama-3 variant {variant!r}")
    vision._attn_implementation = "eager"
    lm._attn_implementation = "eager"
    model = LlavaModel(spec, vision, lm)
    if lm.tie_word_embeddings:
        model.lm.tie_weights()
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3 / max(1.0, p.shape[-1] ** 0.5) * 4)
    model.eval()
    numbers = [tok.token_to_id(t) for t in number_token_texts()]
    # Tied embeddings: rewriting the number rows also moves the prompt's own number tokens; a second pass settles it.
    for _ in range(2 if lm.tie_word_embeddings else 1):
        calibrate_digits(model, tok, numbers)
    return model


@torch.no_grad()
def calibrate_digits(
    model: LlavaModel, tok: Tokenizer, token_ids: list[int] | None = None, spread: float = 2.5, margin: float = 1.0
) -> None:
    """Rewrite the answer tokens' rows of lm_head (the digits, or token_ids) so greedy decoding mostly reads a number
    that depends on the input.

    Random LMs rarely emit digits, and their last hidden state is dominated by the last token (always the same
    whitespace token here). Each answer row gets a shared component along the mean hidden state (so they beat the
    other tokens) plus its own random mix of the main directions in which hidden states vary across inputs.
    """
    from parity import build_ids  # local: parity imports onnxruntime, only needed here

    fmt = model.spec.conv_format
    wid = tok.token_to_id("▁") if fmt == "llava_v1" else tok.encode(" ").ids[-1]
    size = model.vision_tower.config.image_size
    states = []
    for i, cap in enumerate(CAPTION_CORPUS[:8]):
        for metric in CRITERIA:
            ids = build_ids(tok, fmt, cap, metric, wid)
            feats = model.encode_images(torch.randn(1, 3, size, size))[0]
            out = model.lm.model(inputs_embeds=model.splice(ids, feats))
            states.append(out.last_hidden_state[0, -6:])
    h = torch.cat(states)
    mean = h.mean(0)
    centered = h - mean
    _, sv, vt = torch.linalg.svd(centered, full_matrices=False)
    k = min(8, vt.shape[0])
    sd = sv[:k] / (h.shape[0] ** 0.5)
    w = model.lm.lm_head.weight
    targets = token_ids if token_ids is not None else digit_ids(tok)
    others = torch.ones(w.shape[0], dtype=torch.bool)
    others[targets] = False
    best_other = (h @ w[others].T).max(-1).values
    target = float(torch.quantile(best_other, 0.9)) + margin
    base = mean * (target / float(mean @ mean))
    g = torch.Generator().manual_seed(1234)
    for d in targets:
        r = torch.randn(k, generator=g)
        w[d] = base + spread * ((r / sd) @ vt[:k])


def realistic_model(family: str, vocab_size: int, layers: int = 2, vision_layers: int = 2, seed: int = 0):
    """Random weights at the released checkpoints' width (few layers), for benchmarks."""
    torch.manual_seed(seed)
    if family == "llava_qwen":
        vision = SiglipVisionConfig(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=vision_layers, num_attention_heads=16,
            image_size=384, patch_size=14,
        )
        lm = Qwen2Config(
            vocab_size=vocab_size, hidden_size=1536, intermediate_size=8960, num_hidden_layers=layers,
            num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
            rms_norm_eps=1e-6, tie_word_embeddings=True, eos_token_id=151645, pad_token_id=151643,
        )
        spec = LlavaSpec("llava_qwen", "qwen_instruct", "aapool_mlp", -1, "patch", 144, True)
    else:
        vision = CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=vision_layers, num_attention_heads=16,
            image_size=336, patch_size=14, projection_dim=768,
        )
        lm = LlamaConfig(
            vocab_size=vocab_size, hidden_size=5120, intermediate_size=13824, num_hidden_layers=layers,
            num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096, rms_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
        spec = LlavaSpec("llava_llama", "llava_v1", "mlp2x_gelu", -2, "patch", 576, True)
    vision._attn_implementation = "eager"
    lm._attn_implementation = "eager"
    return LlavaModel(spec, vision, lm).eval()


LLAMA3_VOCAB = 128256


def realistic_llama3_model(
    variant: str, tok: Tokenizer, layers: int = 2, vision_layers: int = 2, seed: int = 0
) -> LlavaModel:
    """Random weights at the Llama-3 checkpoints' LM width (few layers), for benchmarks: 'llama3' = Llama-3-8B (4096
    wide, 32/8 heads, theta 500000, untied), 'llama3.2' = Llama-3.2-3B (3072 wide, 24/8 heads, llama3 rope scaling,
    tied), both with Llama-3's 128256-row vocabulary. Towers: 'llama3' LLaVA-1.5's CLIP ViT-L/14-336 with mlp2x_gelu
    (576 image tokens), 'llama3.2' SigLIP-so400m/14-384 (its model card's tower) with mlp2x_gelu (729); the projector
    of the released checkpoints is not known here. Special token ids come from `tok` (the real or the tiny
    Llama-3-style tokenizer)."""
    torch.manual_seed(seed)
    if variant == "llama3":
        vision = CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=vision_layers, num_attention_heads=16,
            image_size=336, patch_size=14, projection_dim=768,
        )
        spec = LlavaSpec("llava_llama", "llama_3", "mlp2x_gelu", -2, "patch", 576, True)
    else:
        vision = SiglipVisionConfig(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=vision_layers, num_attention_heads=16,
            image_size=384, patch_size=14,
        )
        spec = LlavaSpec("llava_llama", "llama_3", "mlp2x_gelu", -2, "patch", 729, True)
    common = dict(
        vocab_size=LLAMA3_VOCAB, num_hidden_layers=layers, num_key_value_heads=8, rope_theta=500000.0,
        rms_norm_eps=1e-5, bos_token_id=tok.token_to_id("<|begin_of_text|>"),
        eos_token_id=[tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")], pad_token_id=None,
    )
    if variant == "llama3":
        lm = LlamaConfig(
            hidden_size=4096, intermediate_size=14336, num_attention_heads=32, max_position_embeddings=8192,
            tie_word_embeddings=False, **common,
        )
    elif variant == "llama3.2":
        lm = LlamaConfig(
            hidden_size=3072, intermediate_size=8192, num_attention_heads=24, head_dim=128,
            max_position_embeddings=131072, tie_word_embeddings=True,
            rope_scaling={
                "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            **common,
        )
    else:
        raise ValueError(f"unknown Llama-3 variant {variant!r}")
    vision._attn_implementation = "eager"
    lm._attn_implementation = "eager"
    model = LlavaModel(spec, vision, lm)
    if lm.tie_word_embeddings:
        model.lm.tie_weights()
    return model.eval()
