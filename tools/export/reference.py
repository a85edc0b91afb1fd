"""reference.json: PyTorch (LLaVA-style, no KV cache) outputs for a few images x captions x metrics."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer

import prompts
from parity import build_ids
from preprocess import preprocess_image, preprocessor_config

CAPTIONS = [
    "A brown dog running on the beach at sunset.",
    "a photo of <image> tags written in the text",
    "Café crème ☕ au 東京 — “quoted” {braces}",
    "IMG_2041.jpg",
    "Two children playing football in a green park, 3 goals.",
]


def fixture_images() -> list[Image.Image]:
    """Small deterministic images of different shapes (padding to square matters for 3 of them)."""
    imgs = []
    sizes = [(40, 28), (30, 52), (56, 56), (64, 20)]
    for i, (w, h) in enumerate(sizes):
        y, x = np.mgrid[0:h, 0:w]
        r = (x * (255 // max(1, w - 1)) + 40 * i) % 256
        g = (y * (255 // max(1, h - 1)) + 90 * i) % 256
        b = ((x + y) * 7 * (i + 1)) % 256
        img = Image.fromarray(np.stack([r, g, b], -1).astype(np.uint8), "RGB")
        d = ImageDraw.Draw(img)
        d.ellipse([w // 4, h // 4, w // 2 + 3, h // 2 + 3], fill=(255 - 60 * i, 30 * i, 200))
        imgs.append(img)
    return imgs


def sig6(values) -> list[float]:
    return [float(f"{float(v):.6g}") for v in values]


def decode(tok: Tokenizer, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True)


def digit_ids(tok: Tokenizer) -> list[int]:
    return [tok.token_to_id(str(d)) for d in range(10)]


@torch.no_grad()
def digit_distributions(model, tok: Tokenizer, ids: list[int], pixel_values: torch.Tensor) -> dict:
    """The first digit's distribution q, each first digit's own next-token digit distribution r[d] (its full prompt
    followed by that digit, run alone), and t = P("0" after "1","0"); the exact expected score over 0..100 that they
    give (numbers complete after two digits, "100" after three), and the greedy integer read along the argmaxes."""
    digits = digit_ids(tok)

    def step(extra: list[int]) -> tuple[list[float], int]:
        logits = model.reference_logits(ids + extra, pixel_values)[-1].float()
        p = torch.softmax(logits, -1)
        return [float(p[x]) for x in digits], int(logits.argmax())

    q, top0 = step([])
    r, tops = [], []
    for d in range(10):
        rd, top = step([digits[d]])
        r.append(rd)
        tops.append(top)
    t_probs, top10 = step([digits[1], digits[0]])
    t = t_probs[0]
    dist = [0.0] * 101
    for d in range(10):
        dist[d] += q[d] * max(0.0, 1.0 - sum(r[d]))
        for e in range(10):
            if d == 1 and e == 0:
                dist[10] += q[1] * r[1][0] * (1 - t)
                dist[100] += q[1] * r[1][0] * t
            else:
                dist[10 * d + e] += q[d] * r[d][e]
    mass = sum(dist)
    expected = sum(v * p for v, p in enumerate(dist)) / mass if mass > 0 else None
    greedy = None
    if top0 in digits:
        d = digits.index(top0)
        if tops[d] in digits:
            e = digits.index(tops[d])
            greedy = (100 if top10 == digits[0] else 10) if (d, e) == (1, 0) else 10 * d + e
        else:
            greedy = d
    return {
        "q": sig6(q),
        "r": [sig6(x) for x in r],
        "t": float(f"{t:.6g}"),
        "expected": None if expected is None else float(f"{expected:.6g}"),
        "greedy_integer": greedy,
    }


@torch.no_grad()
def reference_generate(model, ids: list[int], pixel_values: torch.Tensor, generation: dict, n: int) -> list[int]:
    """The reference's decoding: LLaVA splices the image and hands transformers' generate only inputs_embeds, with
    the checkpoint's generation settings and do_sample=False, max_new_tokens=n. The new tokens (EOS included)."""
    from transformers import GenerationConfig

    feats = model.encode_images(pixel_values[None])[0]
    embeds = model.splice(ids, feats)
    cfg = GenerationConfig(
        do_sample=False,
        max_new_tokens=n,
        repetition_penalty=generation["repetition_penalty"],
        eos_token_id=generation["eos_token_ids"],
        pad_token_id=generation["pad_token_id"],
    )
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    with warnings.catch_warnings():
        # transformers says what LLaVA relies on: with inputs_embeds only, the penalty covers new tokens only.
        warnings.filterwarnings("ignore", message=".*repetition_penalty.*inputs_embeds.*")
        out = model.lm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=cfg)
    return [int(t) for t in out[0]]


def write_fixture_images(model, out_dir: str) -> tuple[list[dict], list[torch.Tensor]]:
    """The fixture images as PNGs and their model tensors (`pixel_values/<i>.f32`), shared by every readout."""
    cfg = preprocessor_config(model)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "pixel_values"), exist_ok=True)
    images, pixels = [], []
    for i, img in enumerate(fixture_images()):
        img.save(os.path.join(out_dir, "images", f"{i}.png"), optimize=True)
        # Re-read the PNG so the tensor is derived from exactly the bytes a consumer reads.
        x = preprocess_image(Image.open(os.path.join(out_dir, "images", f"{i}.png")), cfg, model.spec.pad_to_square)
        x.astype("<f4").tofile(os.path.join(out_dir, "pixel_values", f"{i}.f32"))
        images.append({"file": f"images/{i}.png", "pixel_values": f"pixel_values/{i}.f32", "shape": list(x.shape)})
        pixels.append(torch.from_numpy(x))
    return images, pixels


@torch.no_grad()
def write_reference(model, tok: Tokenizer, out_dir: str, whitespace_id: int, generation: dict) -> None:
    fmt = model.spec.conv_format
    images, pixels = write_fixture_images(model, out_dir)

    cases = []
    digit_first = 0
    penalty_changed = 0
    for i in range(len(images)):
        for caption in (CAPTIONS[i % len(CAPTIONS)], CAPTIONS[(i + 1) % len(CAPTIONS)] if i != 1 else CAPTIONS[2]):
            for metric in prompts.METRICS:
                ids = build_ids(tok, fmt, caption, metric, whitespace_id)
                logits = model.reference_logits(ids, pixels[i])
                greedy = model.reference_greedy(ids, pixels[i], 3)
                assert int(logits[-1].argmax()) == greedy[0]
                text3 = decode(tok, greedy)
                dist = digit_distributions(model, tok, ids, pixels[i])
                n_ref = prompts.MAX_NEW_TOKENS_IN_REFERENCE[fmt]
                generated = reference_generate(model, ids, pixels[i], generation, n_ref)
                penalty_changed += generated != greedy[:n_ref]
                cases.append(
                    {
                        "image": i,
                        "caption": caption,
                        "metric": metric,
                        "prompt": prompts.build_prompt(fmt, caption, metric),
                        "input_ids": ids,
                        "greedy_tokens": greedy,
                        "greedy_text": text3,
                        "greedy_score": prompts.score_number(text3),
                        "reference_2tok_score": prompts.reference_parse(decode(tok, greedy[:2])),
                        "reference_generate_tokens": generated,
                        "reference_generate_score": prompts.reference_parse(decode(tok, generated)),
                        **dist,
                    }
                )
                digit_first += prompts.leading_int(text3) is not None
    doc = {
        "format": fmt,
        "note": (
            "PyTorch reference: image features spliced at the -200 slot (template slot only), full sequence, "
            "no KV cache, fp32. greedy_score = the number the scorer reads from 3 greedy "
            "tokens: leading digits, complete after two, or three when they start '100' (prompts.score_number); "
            "reference_2tok_score = int() of the first line of 2 greedy tokens (None when int() fails). "
            "pixel_values files: float32 little-endian CHW, the exact tensors fed to the vision tower. "
            "q = P(first token = digit d) at the prompt's end; r[d] = P(next = digit e) after the prompt + digit d, "
            "each first digit run as its own continuation; t = P('0') after '1','0'; expected = the exact expected "
            "score over 0..100 they give; greedy_integer = the greedy number read along the argmax tokens. "
            "reference_generate_tokens = transformers' generate(inputs_embeds=..., do_sample=False, max_new_tokens = the "
            "reference's) with `generation` (the checkpoint's repetition penalty and eos ids), as the reference script "
            "decodes; reference_generate_score = int() of its text's first line (None where int() fails)."
        ),
        "generation": {k: generation[k] for k in ("repetition_penalty", "eos_token_ids", "pad_token_id")},
        "whitespace_token_id": whitespace_id,
        "images": images,
        "cases": cases,
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    scores = [c["greedy_score"] for c in cases]
    print(f"reference.json: {len(cases)} cases, numeric greedy scores {digit_first}/{len(cases)}, distinct {len(set(scores))}, "
          f"reference decoding changed by the generation settings in {penalty_changed}")
