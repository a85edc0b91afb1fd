"""Load a released MLM-filter checkpoint (LLaVA-Unified layout) into LlavaModel.

Expected layout (a Hugging Face snapshot of e.g. weizhiwang/mlm-filter-qwen2.5-1.5b-gpt4o):
  config.json                 model_type llava_qwen | llava_llama | llava, mm_* fields
  *.safetensors | *.bin       LM weights (model.*, lm_head.*), projector (model.mm_projector.*), and optionally the
                              vision tower (model.vision_tower.vision_tower.vision_model.*)
  tokenizer.json (+ tokenizer_config.json)
The vision tower comes from the checkpoint when it holds the weights, else from --vision-tower DIR (a snapshot of
config.json's mm_vision_tower, e.g. google/siglip-so400m-patch14-384 or openai/clip-vit-large-patch14-336).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os

import torch
from tokenizers import Tokenizer
from transformers import CLIPVisionConfig, LlamaConfig, Qwen2Config, SiglipVisionConfig

from llava_model import LlavaModel, LlavaSpec


class ExportError(Exception):
    """A user-facing failure (bad input, missing files, hub unreachable): printed without a traceback."""


TOWER_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."

# LLaMA-2's sentencepiece model (the vocabulary of LLaVA-1.5 / mlm-filter-llava-13b-gpt4v) and its tokenizer.json,
# converted with transformers 4.44 (from_slow, legacy=False) and verified id-for-id against the slow tokenizer the
# reference scores with (test/fixtures/tokenizers/llama2/README.md). transformers 5's own conversion differs from it
# on plain text, so it is never used for this vocabulary.
LLAMA2_SPM_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
VERIFIED_LLAMA2_TOKENIZER = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "test", "fixtures", "tokenizers", "llama2", "tokenizer.json.gz"
)


def resolve(source: str, revision: str | None) -> str:
    if os.path.isdir(source):
        return source
    if os.path.exists(source):
        raise ExportError(f"{source} is a file; give the checkpoint directory")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(source, revision=revision)
    except Exception as e:  # noqa: BLE001 - any hub failure ends the same way for the user
        raise ExportError(
            f"{source!r} is not a local directory and could not be downloaded from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Download the checkpoint on a "
            f"machine with access (huggingface-cli download {source} --local-dir DIR) and pass DIR."
        ) from None


def load_weights(directory: str) -> dict[str, torch.Tensor]:
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    state: dict[str, torch.Tensor] = {}
    if files:
        from safetensors.torch import load_file

        for f in files:
            state.update(load_file(f))
        return state
    files = sorted(glob.glob(os.path.join(directory, "pytorch_model*.bin")))
    for f in files:
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    if not state:
        raise ExportError(f"no *.safetensors or pytorch_model*.bin weights in {directory}")
    return state


def vision_config_from(cfg: dict, kind: str):
    if "vision_config" in cfg and cfg.get("model_type") not in ("siglip_vision_model", "clip_vision_model"):
        cfg = cfg["vision_config"]
    keep = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "transformers_version")}
    return SiglipVisionConfig(**keep) if kind == "siglip" else CLIPVisionConfig(**keep)


def load_checkpoint(source: str, vision_tower: str | None, revision: str | None):
    directory = resolve(source, revision)
    cfg_path = os.path.join(directory, "config.json")
    if not os.path.exists(cfg_path):
        raise ExportError(f"{directory} has no config.json")
    cfg = json.load(open(cfg_path))
    mtype = cfg.get("model_type", "")
    tower_name = cfg.get("mm_vision_tower") or cfg.get("vision_tower") or ""
    kind = "siglip" if "siglip" in tower_name.lower() else "clip"
    # LLaVA-Unified builds its Siglip2VisionTower only for NaFlex towers (variable resolution: patches plus a spatial
    # shape per image); a fixed-resolution SigLIP2 tower goes through its SigLIP class, and so it does here.
    if "siglip2" in tower_name.lower() and "naflex" in tower_name.lower():
        raise ExportError(
            f"vision tower {tower_name} (SigLIP2 NaFlex, variable resolution) is not supported by this exporter; "
            "fixed-resolution SigLIP2 towers are"
        )

    if mtype == "llava_qwen":
        lm_cfg = Qwen2Config(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures")})
        family, fmt = "llava_qwen", "qwen_instruct"
    elif mtype in ("llava_llama", "llava"):
        lm_cfg = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures")})
        family, fmt = "llava_llama", None  # llava_v1 or llama_3: decided by the tokenizer below
    else:
        raise ExportError(f"unsupported model_type {mtype!r} (expected llava_qwen, llava_llama or llava)")

    state = load_weights(directory)
    tower_state = {k[len(TOWER_PREFIX) :]: v for k, v in state.items() if k.startswith(TOWER_PREFIX)}
    if "vision_config" in cfg:
        vcfg = vision_config_from(cfg, kind)
    elif vision_tower:
        vt_cfg = os.path.join(vision_tower, "config.json")
        if not os.path.exists(vt_cfg):
            raise ExportError(f"--vision-tower {vision_tower} has no config.json")
        vcfg = vision_config_from(json.load(open(vt_cfg)), kind)
    else:
        raise ExportError(
            f"the checkpoint does not describe its vision tower; pass --vision-tower DIR with a local copy of "
            f"{tower_name or 'the vision tower'}"
        )
    if not tower_state:
        if not vision_tower:
            raise ExportError(f"the checkpoint has no vision tower weights; pass --vision-tower DIR ({tower_name})")
        tower_state = load_weights(vision_tower)
    # Standalone and LLaVA-saved towers name weights vision_model.*; transformers' vision models hold them flat.
    tower_state = {k.removeprefix("vision_model."): v for k, v in tower_state.items() if not k.startswith("text_model.")}

    tok = _load_tokenizer(directory)
    if fmt is None:
        fmt = llama_format(tok, name_hint=f"{source} {cfg.get('_name_or_path', '')}")
    num_patches = (vcfg.image_size // vcfg.patch_size) ** 2
    spec = LlavaSpec(
        family=family,
        conv_format=fmt,
        projector_type=cfg.get("mm_projector_type", "linear"),
        select_layer=int(cfg.get("mm_vision_select_layer", -2)),
        select_feature=cfg.get("mm_vision_select_feature", "patch"),
        num_image_tokens=int(cfg.get("mm_num_image_tokens") or num_patches),
        pad_to_square=cfg.get("image_aspect_ratio", "square") == "pad",
    )
    vcfg._attn_implementation = "eager"
    lm_cfg._attn_implementation = "eager"
    model = LlavaModel(spec, vcfg, lm_cfg)

    _load_part(model.vision_tower, tower_state, "vision tower", optional_prefixes=("head.",))
    proj = {k[len(PROJECTOR_PREFIX) :]: v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}
    _load_part(model.mm_projector, proj, "projector")
    lm_state = {k: v for k, v in state.items() if not k.startswith((TOWER_PREFIX, PROJECTOR_PREFIX))}
    optional = ("lm_head.",) if lm_cfg.tie_word_embeddings else ()
    _load_part(model.lm, lm_state, "language model", optional_prefixes=optional)
    if lm_cfg.tie_word_embeddings:
        model.lm.tie_weights()
    model.float().eval()

    tc_path = os.path.join(directory, "tokenizer_config.json")
    tok_cfg = json.load(open(tc_path)) if os.path.exists(tc_path) else {}
    name = cfg.get("_name_or_path") or (source if not os.path.isdir(source) else os.path.basename(os.path.abspath(source)))
    return model, tok, tok_cfg, name, revision or "local"


def llama_format(tok: Tokenizer, name_hint: str = "") -> str:
    """The conversation format of a llava_llama checkpoint. The v2 script picks it from the model's name ("llama-3"
    -> llama_3, "v1" -> llava_v1); a renamed local directory says nothing, so the vocabulary decides: a Llama-3
    tokenizer (<|begin_of_text|>) means llama_3, LLaMA-2's (<s>) llava_v1. A name that contradicts the tokenizer is
    refused rather than guessed."""
    if tok.token_to_id("<|begin_of_text|>") is not None:
        fmt = "llama_3"
    elif tok.token_to_id("<s>") is not None:
        fmt = "llava_v1"
    else:
        raise ExportError("llava_llama checkpoint with neither a Llama-3 (<|begin_of_text|>) nor a LLaMA-2 (<s>) tokenizer")
    if "llama-3" in name_hint.lower() and fmt != "llama_3":
        raise ExportError(f"{name_hint.strip()!r} names a Llama-3 model but its tokenizer is not Llama-3's")
    return fmt


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_tokenizer(directory: str) -> Tokenizer:
    """The checkpoint's tokenizer.json; for a sentencepiece-only checkpoint, the verified LLaMA-2 conversion."""
    tok_path = os.path.join(directory, "tokenizer.json")
    if os.path.exists(tok_path):
        return Tokenizer.from_file(tok_path)
    spm = os.path.join(directory, "tokenizer.model")
    if os.path.exists(spm):
        if _sha256(spm) == LLAMA2_SPM_SHA256 and os.path.exists(VERIFIED_LLAMA2_TOKENIZER):
            with gzip.open(VERIFIED_LLAMA2_TOKENIZER, "rt", encoding="utf-8") as f:
                return Tokenizer.from_str(f.read())
        raise ExportError(
            f"{directory} has a sentencepiece tokenizer.model but no tokenizer.json, and it is not LLaMA-2's (the only "
            "one this tool carries a verified conversion for). transformers 5's conversion does not match the slow "
            "tokenizer the reference scores with; convert it with transformers 4.44 and check a few captions: "
            "python -c \"from transformers import AutoTokenizer as A; A.from_pretrained('DIR', use_fast=True, "
            "from_slow=True, legacy=False).save_pretrained('DIR')\""
        )
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(directory, use_fast=True).save_pretrained(directory)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{directory} has no tokenizer.json and converting its tokenizer failed: {e}") from None
    return Tokenizer.from_file(tok_path)


def _load_part(module: torch.nn.Module, state: dict, what: str, optional_prefixes: tuple[str, ...] = ()) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(optional_prefixes)]
    unexpected = [k for k in unexpected if not k.startswith(optional_prefixes) and "rotary_emb" not in k]
    if missing or unexpected:
        raise ExportError(
            f"{what} weights do not match the architecture: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
