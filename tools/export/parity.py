"""Run the exported ONNX files in onnxruntime and compare with the PyTorch reference (fails loudly when off)."""

from __future__ import annotations

import os

import numpy as np
import ort_telemetry  # noqa: F401  (first: turns onnxruntime's telemetry off before it loads)
import onnxruntime as ort
import torch
from tokenizers import Tokenizer

import prompts
from llava_model import LlavaModel
from onnx_export import suffix

# Tolerances follow the logit scale: float rounding differences between onnxruntime and PyTorch grow with the
# magnitude of the logits (and with depth), so a fixed absolute bound fails correct exports of real checkpoints
# (measured: 1.23e-4 on a correct export with logits ~20). tol = REL x max(1, max |logit|): fp32 1e-3 at logits ~20,
# while a wrong graph (mask, positions, rope, norm) is off by 1e-2 and more at that scale.
FP32_REL_TOL = 5e-5
FP16_REL_TOL = 2e-2


def tolerance(dtype: str, scale: float) -> tuple[float, str]:
    """(absolute tolerance, its derivation) for differences of logits or log-probs at logit scale `scale`."""
    rel = FP32_REL_TOL if dtype == "fp32" else FP16_REL_TOL
    tol = rel * max(1.0, scale)
    return tol, f"{tol:.3g} = {rel:g} x max(1, max |logit| {scale:.3g})"


def tie_equal(ref_logits: torch.Tensor, ref_id: int, got_id: int, tol: float) -> bool:
    """Greedy tokens agree, or the export picked a token whose reference logit is within tol of the maximum (a
    near-tie that float rounding may resolve either way)."""
    return ref_id == got_id or float(ref_logits[ref_id] - ref_logits[got_id]) <= tol


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
    tol, rule = tolerance(dtype, scale)
    ok = worst <= tol
    detail = ", ".join(f"{k}={v:.3g}" for k, v in diffs.items())
    status = "OK" if ok else "FAILED"
    print(f"parity {dtype} ORT vs PyTorch: max abs diff {detail}; score-token argmax equal: {argmax_ok}; "
          f"tolerance {rule}: {status}")
    if not ok:
        bad = [f"{k} {v:.3g}" for k, v in diffs.items() if v > tol]
        print(f"parity {dtype}: beyond tolerance {tol:.3g}: {', '.join(bad)} (max abs difference of logits, "
              "PyTorch fp32 vs onnxruntime)")
    return ok


@torch.no_grad()
def scorer_check(model: LlavaModel, tok: Tokenizer, out_dir: str, dtype: str, whitespace_id: int) -> bool:
    """The one-pass graph on a batch of two packed pairs (4 metrics, digit chains; llama_3: the number tokens at each
    prompt's end) against PyTorch running every metric's full prompt, and every prompt + chain, alone."""
    from onnx_export import scorer_file
    from scorer_graph import pack_pair

    torch.manual_seed(2)
    size = model.vision_tower.config.image_size
    pix = torch.randn(2, 3, size, size)
    fmt = model.spec.conv_format
    digits = [tok.token_to_id(str(d)) for d in range(10)]
    chains = [[digits[0]], [digits[1], digits[0]]] + [[x] for x in digits[2:]]
    if prompts.READOUTS[fmt] == "single_token_numbers":
        # llama_3 is read as the scorer reads it: one row per metric, the ids of "0".."100", no chains.
        digits, chains = [tok.token_to_id(t) for t in prompts.number_token_texts()], []
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
            expect.append((b, len(r) - 1, prompts.METRICS[m], ps[m], []))
            for c, positions in zip(chains, rr["chains"]):
                for j, at in enumerate(positions):
                    r.append(at)
                    expect.append((b, len(r) - 1, prompts.METRICS[m], ps[m], c[: j + 1]))
        readout.append(r)
    feeds["readout_positions"] = np.array(readout, np.int64)
    feeds["readout_token_ids"] = np.array(digits, np.int64)
    feeds["pixel_values"] = pix.numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(scorer_file(out_dir, dtype), opts)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    return compare_scorer(model, tok, dtype, pix, expect, got, digits)


def _where(tok: Tokenizer, b: int, metric: str, cont: list[int]) -> str:
    after = "the prompt" if not cont else "the prompt + " + " ".join(repr(tok.decode([c])) for c in cont)
    return f"pair {b}, {metric}, after {after}"


@torch.no_grad()
def compare_scorer(model, tok, dtype, pix, expect, got, digits) -> bool:
    """Every readout row of the graph against PyTorch's logits of that row's full sequence run alone; prints what
    differs, where and by how much."""
    from scorer_graph import TOP_K

    rows = []
    scale = 0.0
    for b, row, metric, ids, cont in expect:
        logits = model.reference_logits(ids + cont, pix[b])[-1].float()
        scale = max(scale, float(logits.abs().max()))
        rows.append((b, row, metric, cont, logits))
    tol, rule = tolerance(dtype, scale)
    worst = {"digit log-prob": (0.0, ""), "digit logit": (0.0, ""), "top-k logit": (0.0, "")}
    greedy_bad: list[str] = []

    def note(kind: str, diff: float, what: str) -> None:
        if diff > worst[kind][0]:
            worst[kind] = (diff, what)

    for b, row, metric, cont, logits in rows:
        where = _where(tok, b, metric, cont)
        ref_lp = torch.log_softmax(logits, -1)
        for k, d in enumerate(digits):
            lp, lg = float(got["token_logprobs"][b, row, k]), float(got["token_logits"][b, row, k])
            note("digit log-prob", abs(lp - float(ref_lp[d])),
                 f"{where}: log P({tok.decode([d])!r}) onnx {lp:.6g} vs pytorch {float(ref_lp[d]):.6g}")
            note("digit logit", abs(lg - float(logits[d])),
                 f"{where}: logit of {tok.decode([d])!r} onnx {lg:.6g} vs pytorch {float(logits[d]):.6g}")
        ref_vals, ref_ids = torch.topk(logits, TOP_K)
        for j in range(TOP_K):
            v, i = float(got["top_k_logits"][b, row, j]), int(got["top_k_token_ids"][b, row, j])
            note("top-k logit", abs(v - float(ref_vals[j])),
                 f"{where}: rank {j} logit onnx {v:.6g} vs pytorch {float(ref_vals[j]):.6g}")
            # The id at each rank must carry that rank's value in PyTorch too (ties may swap ids).
            if abs(float(logits[i]) - float(ref_vals[j])) > tol:
                greedy_bad.append(f"{where}: rank {j} token onnx {i} (pytorch logit {float(logits[i]):.6g}) vs pytorch "
                                  f"{int(ref_ids[j])} ({float(ref_vals[j]):.6g})")
        top = int(got["top_token_ids"][b, row])
        if not tie_equal(logits, int(logits.argmax()), top, tol):
            greedy_bad.append(f"{where}: greedy token onnx {top} vs pytorch {int(logits.argmax())} "
                              f"(pytorch logits {float(logits[top]):.6g} vs {float(logits.max()):.6g})")
    beyond = {k: v for k, v in worst.items() if v[0] > tol}
    ok = not beyond and (not greedy_bad or dtype != "fp32")
    summary = ", ".join(f"{k} {v[0]:.3g}" for k, v in worst.items())
    status = "OK" if ok else "FAILED"
    print(f"scorer graph {dtype} ORT vs PyTorch full prompts, {len(rows)} readout rows: max |diff| {summary}; "
          f"greedy and top-{TOP_K} tokens equal up to ties: {not greedy_bad}; tolerance {rule}: {status}")
    for kind, (diff, what) in beyond.items():
        print(f"scorer graph {dtype}: {kind} differs by {diff:.3g} > {tol:.3g}, worst at {what}")
    for line in greedy_bad[:5] if dtype == "fp32" else []:
        print(f"scorer graph {dtype}: token differs beyond a tie: {line}")
    return ok
