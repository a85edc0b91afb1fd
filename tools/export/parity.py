"""Run the exported ONNX files in onnxruntime and compare with the PyTorch reference (fails loudly when off)."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import Tokenizer

import prompts
from llava_model import LlavaModel
from onnx_export import suffix

# fp32 must match to float rounding; fp16 is judged relative to the logit range.
FP32_ABS_TOL = 1e-4
FP16_REL_TOL = 2e-2


def encode_fn(tok: Tokenizer):
    return lambda text: tok.encode(text).ids


def build_ids(tok: Tokenizer, conv_format: str, caption: str, metric: str, whitespace_id: int) -> list[int]:
    bos_text = prompts.BOS_TOKENS[conv_format]
    bos = tok.token_to_id(bos_text) if bos_text else None
    prompt = prompts.build_prompt(conv_format, caption, metric)
    return prompts.tokenizer_image_token(encode_fn(tok), prompt, conv_format, bos) + [whitespace_id]


class OrtModel:
    def __init__(self, out_dir: str, dtype: str):
        sfx = suffix(dtype)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        load = lambda n: ort.InferenceSession(os.path.join(out_dir, "onnx", f"{n}{sfx}.onnx"), opts)  # noqa: E731
        self.vision, self.embed, self.decoder = load("vision_encoder"), load("embed_tokens"), load("decoder_model_merged")
        self.np_dtype = np.float16 if dtype == "fp16" else np.float32
        self.input_names = {i.name for i in self.decoder.get_inputs()}
        kv = [i for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]
        self.n_layers = len(kv) // 2
        self.kv_heads, self.head_dim = kv[0].shape[1], kv[0].shape[3]

    def embeds(self, ids: list[int], feats: np.ndarray) -> np.ndarray:
        """[S', H] with the -200 slot replaced by the image features."""
        slot = ids.index(prompts.IMAGE_TOKEN_INDEX)
        safe = np.array([[0 if t == prompts.IMAGE_TOKEN_INDEX else t for t in ids]], np.int64)
        e = self.embed.run(None, {"input_ids": safe})[0][0]
        return np.concatenate([e[:slot], feats, e[slot + 1 :]], 0)

    def empty_past(self, b: int) -> dict:
        z = np.zeros((b, self.kv_heads, 0, self.head_dim), self.np_dtype)
        return {f"past_key_values.{i}.{kv}": z for i in range(self.n_layers) for kv in ("key", "value")}

    def run(self, embeds, mask, pos, past, keep: int = 0):
        feeds = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": pos, **past}
        if "num_logits_to_keep" in self.input_names:
            feeds["num_logits_to_keep"] = np.array(keep, np.int64)
        outs = self.decoder.run(None, feeds)
        present = {
            f"past_key_values.{i}.{kv}": outs[1 + 2 * i + j]
            for i in range(self.n_layers)
            for j, kv in enumerate(("key", "value"))
        }
        return outs[0], present


@torch.no_grad()
def self_check(model: LlavaModel, tok: Tokenizer, out_dir: str, dtype: str, whitespace_id: int) -> bool:
    """Full prefill, prefill + cached continuation, and a left-padded batch of two, against PyTorch fp32."""
    torch.manual_seed(1)
    size = model.vision_tower.config.image_size
    pix = torch.randn(2, 3, size, size)
    fmt = model.spec.conv_format
    ids_a = build_ids(tok, fmt, "A brown dog running on the beach.", "image_text_matching", whitespace_id)
    ids_b = build_ids(tok, fmt, "Two <image> cats, 東京 ☕", "semantic_understanding", whitespace_id)
    ref_a = model.reference_logits(ids_a, pix[0]).numpy()
    ref_b = model.reference_logits(ids_b, pix[1]).numpy()

    m = OrtModel(out_dir, dtype)
    feats = m.vision.run(None, {"pixel_values": pix.numpy().astype(m.np_dtype)})[0].astype(np.float32)
    ref_feats = model.encode_images(pix).numpy()
    diffs = {"image_features": float(np.abs(feats - ref_feats).max())}

    ea, eb = m.embeds(ids_a, feats[0].astype(m.np_dtype)), m.embeds(ids_b, feats[1].astype(m.np_dtype))
    la, lb = len(ea), len(eb)

    # 1) one prefill of the whole sequence, past length 0
    full, _ = m.run(ea[None], np.ones((1, la), np.int64), np.arange(la)[None].astype(np.int64), m.empty_past(1))
    diffs["prefill_all_positions"] = float(np.abs(full[0].astype(np.float32) - ref_a).max())

    # 2) prefill all but the last 4 positions, then continue with the KV cache
    k = la - 4
    _, past = m.run(ea[None, :k], np.ones((1, k), np.int64), np.arange(k)[None].astype(np.int64), m.empty_past(1))
    cont, _ = m.run(ea[None, k:], np.ones((1, la), np.int64), np.arange(k, la)[None].astype(np.int64), past)
    diffs["cached_continuation"] = float(np.abs(cont[0].astype(np.float32) - ref_a[k:]).max())

    # 3) left-padded batch of two sequences of different length
    n = max(la, lb)
    emb = np.zeros((2, n, ea.shape[1]), m.np_dtype)
    mask = np.zeros((2, n), np.int64)
    for r, e in enumerate((ea, eb)):
        emb[r, n - len(e) :] = e
        mask[r, n - len(e) :] = 1
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None).astype(np.int64)
    # keep=1: the scorer's way (logits of the last position only), where the decoder has num_logits_to_keep
    batch, _ = m.run(emb, mask, pos, m.empty_past(2), keep=1)
    diffs["left_padded_batch_last"] = float(
        max(np.abs(batch[0, -1].astype(np.float32) - ref_a[-1]).max(), np.abs(batch[1, -1].astype(np.float32) - ref_b[-1]).max())
    )
    scale = float(max(np.abs(ref_a).max(), np.abs(ref_b).max()))
    worst = max(diffs.values())
    argmax_ok = int(batch[0, -1].argmax()) == int(ref_a[-1].argmax()) and int(batch[1, -1].argmax()) == int(
        ref_b[-1].argmax()
    )
    if dtype == "fp32":
        ok = worst < FP32_ABS_TOL
        rule = f"max abs diff < {FP32_ABS_TOL}"
    else:
        ok = worst / scale < FP16_REL_TOL
        rule = f"max abs diff / max |logit| ({scale:.3g}) < {FP16_REL_TOL}"
    detail = ", ".join(f"{k}={v:.3g}" for k, v in diffs.items())
    status = "OK" if ok else "FAILED"
    print(f"parity {dtype} ORT vs PyTorch: {detail}; score-token argmax equal: {argmax_ok}; {rule}: {status}")
    return ok


@torch.no_grad()
def scorer_check(model: LlavaModel, tok: Tokenizer, out_dir: str, dtype: str, whitespace_id: int) -> bool:
    """The one-pass graph on a batch of two packed pairs (4 metrics, digit chains) against PyTorch running every
    metric's full prompt, and every prompt + chain, alone."""
    from onnx_export import scorer_file
    from scorer_graph import pack_pair

    torch.manual_seed(2)
    size = model.vision_tower.config.image_size
    pix = torch.randn(2, 3, size, size)
    fmt = model.spec.conv_format
    digits = [tok.token_to_id(str(d)) for d in range(10)]
    chains = [[digits[0]], [digits[1], digits[0]]] + [[x] for x in digits[2:]]
    n_img = int(model.encode_images(pix[:1]).shape[1])
    rows = []
    for caption in ("A brown dog running on the beach.", "Two <image> cats, 東京 ☕"):
        ps = [build_ids(tok, fmt, caption, m, whitespace_id) for m in prompts.METRICS]
        rows.append((ps, pack_pair(ps, chains, n_img)))
    length = max(len(p["ids"]) for _, p in rows)
    feeds = {k: np.zeros((2, length), np.int64) for k in ("input_ids", "position_ids", "chain_ids")}
    feeds["branch_ids"] = np.full((2, length), -1, np.int64)
    readout, expect = [], []
    for b, (ps, pk) in enumerate(rows):
        n = len(pk["ids"])
        for name, key in (("input_ids", "ids"), ("position_ids", "position_ids"), ("branch_ids", "branch_ids"), ("chain_ids", "chain_ids")):
            feeds[name][b, :n] = pk[key]
        r = []
        for m, rr in enumerate(pk["readout"]):
            r.append(rr["prompt"])
            expect.append((b, len(r) - 1, ps[m], []))
            for c, positions in zip(chains, rr["chains"]):
                for j, at in enumerate(positions):
                    r.append(at)
                    expect.append((b, len(r) - 1, ps[m], c[: j + 1]))
        readout.append(r)
    feeds["readout_positions"] = np.array(readout, np.int64)
    feeds["readout_token_ids"] = np.array(digits, np.int64)
    feeds["pixel_values"] = pix.numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(scorer_file(out_dir, dtype), opts)
    logprobs, top = sess.run(None, feeds)
    worst, argmax_ok = 0.0, True
    for b, row, ids, cont in expect:
        logits = model.reference_logits(ids + cont, pix[b])[-1]
        ref = torch.log_softmax(logits, -1)[digits].numpy()
        worst = max(worst, float(np.abs(ref - logprobs[b, row]).max()))
        argmax_ok &= int(logits.argmax()) == int(top[b, row])
    tol = 1e-4 if dtype == "fp32" else 0.1
    ok = worst < tol and (argmax_ok or dtype != "fp32")
    status = "OK" if ok else "FAILED"
    print(f"scorer graph {dtype} ORT vs PyTorch full prompts: max |digit logprob diff| {worst:.3g} (< {tol}), "
          f"greedy tokens equal: {argmax_ok}: {status}")
    return ok
