"""reference.json for the single-token-numbers readout (conversation format llama_3): PyTorch (LLaVA-style, no KV
cache) outputs for the same images x captions x metrics as reference.py writes for the digit-chain families.

Llama-3's tokenizer holds every number 0..999 as one token and never joins a number to the space before it (its
pre-tokenizer splits digit runs in groups of up to three), so in training "ASSISTANT: 87\\n..." is ":", " ", "87",
and the v2 script, which appends the space token to the prompt, reads its one generated token. Per case:
p[v] = P(first token = the token "v") for v = 0..100, the expected score over them, the greedy integer and the
reference's int() of that one token.
"""

from __future__ import annotations

import json
import os

import torch
from tokenizers import Tokenizer

import prompts
from parity import build_ids
from reference import CAPTIONS, decode, sig6, write_fixture_images


@torch.no_grad()
def number_distribution(model, tok: Tokenizer, ids: list[int], pixel_values: torch.Tensor) -> dict:
    numbers = [tok.token_to_id(t) for t in prompts.number_token_texts()]
    logits = model.reference_logits(ids, pixel_values)[-1].float()
    probs = torch.softmax(logits, -1)
    p = [float(probs[x]) for x in numbers]
    mass = sum(p)
    top = int(logits.argmax())
    # What the v2 script stores: batch_decode(skip_special_tokens=True) of its one new token.
    text = decode(tok, [top])
    return {
        "p": sig6(p),
        "expected": float(f"{sum(v * x for v, x in enumerate(p)) / mass:.6g}") if mass > 0 else None,
        "greedy_token": top,
        "greedy_text": text,
        "greedy_integer": prompts.single_token_score(text),
        "reference_1tok_score": prompts.reference_parse(text),
    }


@torch.no_grad()
def write_number_reference(model, tok: Tokenizer, out_dir: str, whitespace_id: int, generation: dict | None = None) -> None:
    fmt = model.spec.conv_format
    images, pixels = write_fixture_images(model, out_dir)

    cases = []
    for i in range(len(images)):
        for caption in (CAPTIONS[i % len(CAPTIONS)], CAPTIONS[(i + 1) % len(CAPTIONS)] if i != 1 else CAPTIONS[2]):
            for metric in prompts.METRICS:
                ids = build_ids(tok, fmt, caption, metric, whitespace_id)
                cases.append(
                    {
                        "image": i,
                        "caption": caption,
                        "metric": metric,
                        "prompt": prompts.build_prompt(fmt, caption, metric),
                        "input_ids": ids,
                        **number_distribution(model, tok, ids, pixels[i]),
                    }
                )
    doc = {
        "format": fmt,
        "readout": prompts.READOUTS[fmt],
        "note": (
            "PyTorch reference: image features spliced at the -200 slot (template slot only), full sequence, no KV "
            "cache, fp32. Single-token numbers: p[v] = P(first token = the token 'v') at the prompt's end (after the "
            "whitespace id), v = 0..100; expected = sum v p[v] / sum p; greedy_token = the argmax over the vocabulary "
            "(what generate with max_new_tokens=1 and do_sample=False returns: a repetition penalty cannot act on the "
            "first new token, LLaVA generates from inputs_embeds only); greedy_integer = its number when it is one of "
            "'0'..'100', else null; reference_1tok_score = int() of its text as batch_decode(skip_special_tokens) "
            "gives it, null where int() raises. pixel_values files: float32 little-endian CHW."
        ),
        "whitespace_token_id": whitespace_id,
        "number_token_ids": [tok.token_to_id(t) for t in prompts.number_token_texts()],
        "images": images,
        "cases": cases,
    }
    if generation is not None:
        doc["generation"] = {k: generation[k] for k in ("repetition_penalty", "eos_token_ids", "pad_token_id") if k in generation}
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    scores = [c["greedy_integer"] for c in cases]
    numeric = sum(s is not None for s in scores)
    print(f"reference.json: {len(cases)} cases, greedy number tokens {numeric}/{len(cases)}, distinct {len(set(scores))}")
