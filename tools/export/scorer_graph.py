"""The scorer's one-pass graph: pixels and packed prompt ids in, the digit probabilities of every metric out.

One run per batch of pairs, no KV cache crossing the graph's boundary. Each pair is ONE packed sequence

    [prefix: system, image, caption] [metric suffix 1][candidates 1] ... [metric suffix k][candidates k]

with a tree attention mask built in the graph from two small integer inputs per position:

- branch_ids: -1 padding, 0 the shared prefix, m >= 1 the m-th metric branch (its suffix and its candidates);
- chain_ids: 0 for prefix and suffix tokens, c >= 1 for the c-th candidate chain of the branch.

A query sees a key at an earlier or equal index when the key is in the prefix, or in the query's own branch and
either in the branch's suffix or in the query's own chain. Position ids (an input) continue from the prefix in every
branch and from the suffix in every chain, so every branch computes exactly what its full prompt alone would,
and every candidate chain exactly what the prompt followed by that chain would.

The readout takes the hidden states at `readout_positions` [B, R] (the suffix ends and the candidate tokens): the last
decoder layer computes keys and values for every position but everything else only for those rows (exact, and it
spares that layer's work on the other ~95% of positions); then the final norm and lm_head run on those rows only, takes the log-softmax over the vocabulary in float32 and returns
- token_logprobs [B, R, K]: log-probabilities of `readout_token_ids` [K] (the digits, the whitespace lead...),
- top_token_ids [B, R]: the argmax over the whole vocabulary (the greedy token),
- token_logits [B, R, K]: the raw (float32, pre-softmax) logits of `readout_token_ids`,
- top_k_logits [B, R, TOP_K] and top_k_token_ids [B, R, TOP_K]: the TOP_K largest raw logits over the whole
  vocabulary, descending (ties: lower id first), and their ids.
The raw logits let a reader reproduce the reference's `generate` under a repetition penalty, which rescales the
logits of already generated tokens before the argmax (lib/model/generation.ts): the penalised argmax at a row whose
chain has generated n tokens is among those n tokens and the n + 1 largest others. TOP_K = 4 covers the longest
candidate chain (whitespace lead, "1", "0"). Exports before these three outputs still load (no penalty possible).
A few hundred floats per pair come back, nothing vocabulary-sized.

Image slots: input ids < 0 mark the image's N positions (N = the projector's token count), which take the vision
encoder's features in order; pixel_values go in as float32 (cast to the model's dtype in the graph).
"""

from __future__ import annotations

import torch
from torch import nn

from llava_model import DecoderGraph, LlavaModel, VisionEncoderGraph

INPUT_NAMES = [
    "pixel_values",
    "input_ids",
    "position_ids",
    "branch_ids",
    "chain_ids",
    "readout_positions",
    "readout_token_ids",
]
OUTPUT_NAMES = ["token_logprobs", "top_token_ids", "token_logits", "top_k_logits", "top_k_token_ids"]
TOP_K = 4


def tree_mask(branch_ids: torch.Tensor, chain_ids: torch.Tensor) -> torch.Tensor:
    """allowed [B, 1, L, L] (bool) for the packed layout described in the module header."""
    length = branch_ids.shape[1]
    idx = torch.arange(length, device=branch_ids.device)
    causal = (idx[None, :] <= idx[:, None])[None]
    bq, bk = branch_ids[:, :, None], branch_ids[:, None, :]
    cq, ck = chain_ids[:, :, None], chain_ids[:, None, :]
    same_branch = (bk == bq) & ((ck == 0) | (ck == cq))
    return (causal & (bk >= 0) & ((bk == 0) | same_branch))[:, None]


class ScorerGraph(nn.Module):
    def __init__(self, model: LlavaModel, fused_attention: bool = True):
        super().__init__()
        self.vision = VisionEncoderGraph(model)
        self.embed = model.lm.get_input_embeddings()
        self.decoder = DecoderGraph(model, fused_attention=fused_attention)

    def forward(self, pixel_values, input_ids, position_ids, branch_ids, chain_ids, readout_positions, readout_token_ids):
        dtype = self.embed.weight.dtype
        feats = self.vision(pixel_values.to(dtype))
        b, n_img, hidden = feats.shape
        is_image = input_ids < 0
        text = self.embed(torch.clamp(input_ids, min=0))
        # The k-th image slot of a row takes the k-th feature row of its image.
        slot = torch.clamp(torch.cumsum(is_image.to(torch.int64), dim=1) - 1, min=0, max=n_img - 1)
        image = torch.gather(feats, 1, slot[:, :, None].expand(-1, -1, hidden))
        h = torch.where(is_image[:, :, None], image, text)

        rows, _ = self.decoder.run_layers(h, position_ids, tree_mask(branch_ids, chain_ids), rows=readout_positions)
        logits = self.decoder.lm_head(self.decoder._rms(self.decoder.norm, rows)).float()
        logprobs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        picked = torch.index_select(logprobs, 2, readout_token_ids)
        top_logits, top_ids = torch.topk(logits, TOP_K, dim=-1)
        raw = torch.index_select(logits, 2, readout_token_ids)
        return picked, torch.argmax(logits, dim=-1), raw, top_logits, top_ids


def pack_pair(prompts: list[list[int]], chains: list[list[int]], n_image: int) -> dict:
    """One pair's packed row (lists) from its full prompt ids per metric (image slot = one negative id) and the
    candidate chains appended after every metric's prompt. The TypeScript scorer builds the same layout
    (lib/model/packing.ts); this one serves the export's self-check.

    Returns ids, position_ids, branch_ids, chain_ids, and per metric the readout index of its prompt's last token
    and of each chain's tokens."""
    expand = lambda ids: [t for x in ids for t in ([x] * n_image if x < 0 else [x])]  # noqa: E731
    full = [expand(p) for p in prompts]
    common = min(len(p) for p in full) - 1
    for p in full[1:]:
        common = min(common, next((i for i, (a, b) in enumerate(zip(full[0], p)) if a != b), common))
    ids, pos, branch, chain = list(full[0][:common]), list(range(common)), [0] * common, [0] * common
    readout = []
    for m, p in enumerate(full, start=1):
        suffix = p[common:]
        ids += suffix
        pos += list(range(common, len(p)))
        branch += [m] * len(suffix)
        chain += [0] * len(suffix)
        rows = {"prompt": len(ids) - 1, "chains": []}
        for c, toks in enumerate(chains, start=1):
            start = len(ids)
            ids += toks
            pos += list(range(len(p), len(p) + len(toks)))
            branch += [m] * len(toks)
            chain += [c] * len(toks)
            rows["chains"].append(list(range(start, start + len(toks))))
        readout.append(rows)
    return {"ids": ids, "position_ids": pos, "branch_ids": branch, "chain_ids": chain, "readout": readout}
