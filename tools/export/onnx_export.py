"""Export the three graphs with torch.onnx's dynamo exporter, and check them in onnxruntime against PyTorch."""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import onnx
import torch
from google.protobuf.message import EncodeError
from torch.export import Dim

import fused_ops
from llava_model import DecoderGraph, EmbedTokensGraph, LlavaModel, VisionEncoderGraph
from scorer_graph import INPUT_NAMES, OUTPUT_NAMES, ScorerGraph

ONNX_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
TWO_GB = 2_000_000_000


def suffix(dtype: str) -> str:
    return "" if dtype == "fp32" else "_" + dtype


def _fits_one_file(proto) -> bool:
    """A protobuf message must stay under 2 GB; past that protobuf cannot even size it (EncodeError)."""
    try:
        return proto.ByteSize() < TWO_GB - 100_000_000
    except EncodeError:
        return False


def _save(program, path: str) -> list[str]:
    proto = program.model_proto
    if _fits_one_file(proto):
        onnx.save(proto, path)
        return [path]
    data = os.path.basename(path) + "_data"
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data, size_threshold=1024)
    data_path = os.path.join(os.path.dirname(path), data)
    # onnx writes the data file owner-only (0600); the worker image reads models as a non-root user.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(data_path, 0o666 & ~umask)
    return [path, data_path]


def _export(module, args, path, input_names, output_names, dynamic_shapes) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
            custom_translation_table=fused_ops.TRANSLATIONS,
        )
    return _save(program, path)


def kv_names(n_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def export_all(model: LlavaModel, out_dir: str, dtype: str, fused_attention: bool = True) -> list[str]:
    """Writes onnx/{vision_encoder,embed_tokens,decoder_model_merged}{suffix}.onnx; returns the paths written.

    fused_attention: the decoder's attention as com.microsoft.MultiHeadAttention (onnxruntime only); False keeps
    standard ONNX ops (for other runtimes)."""
    os.makedirs(os.path.join(out_dir, "onnx"), exist_ok=True)
    tdtype = ONNX_DTYPES[dtype]
    # A copy for other dtypes: casting the caller's model down and back would round its weights.
    m = copy.deepcopy(model).to(tdtype) if tdtype != torch.float32 else model
    sfx = suffix(dtype)
    written: list[str] = []
    batch = Dim("batch_size", min=1, max=1024)

    vcfg = m.vision_tower.config
    vis = VisionEncoderGraph(m).eval()
    pix = torch.randn(2, 3, vcfg.image_size, vcfg.image_size, dtype=tdtype)
    written += _export(
        vis,
        (pix,),
        os.path.join(out_dir, "onnx", f"vision_encoder{sfx}.onnx"),
        ["pixel_values"],
        ["image_features"],
        ({0: batch},),
    )

    emb = EmbedTokensGraph(m).eval()
    seq = Dim("sequence_length", min=1, max=65536)
    ids = torch.randint(0, m.lm.config.vocab_size, (2, 7))
    written += _export(
        emb,
        (ids,),
        os.path.join(out_dir, "onnx", f"embed_tokens{sfx}.onnx"),
        ["input_ids"],
        ["inputs_embeds"],
        ({0: batch, 1: seq},),
    )

    dec = DecoderGraph(m, fused_attention=fused_attention).eval()
    n_layers = len(dec.layers)
    past_len, s = 3, 5
    hidden = m.lm.config.hidden_size
    past_dim = Dim("past_sequence_length", min=0, max=65536)
    embeds = torch.randn(2, s, hidden, dtype=tdtype)
    mask = torch.ones(2, past_len + s, dtype=torch.int64)
    pos = torch.arange(past_len, past_len + s)[None].repeat(2, 1)
    past = [torch.randn(2, dec.n_kv, past_len, dec.head_dim, dtype=tdtype) for _ in range(2 * n_layers)]
    # The exporter derives total = past + sequence from the graph; a free dim here lets it.
    total = Dim.DYNAMIC
    # *past is one varargs entry for torch.export: its shapes go in one nested tuple.
    keep = torch.tensor(1, dtype=torch.int64)
    shapes = (
        {0: batch, 1: seq},
        {0: batch, 1: total},
        {0: batch, 1: seq},
        None,
        tuple({0: batch, 2: past_dim} for _ in past),
    )
    written += _export(
        dec,
        (embeds, mask, pos, keep, *past),
        os.path.join(out_dir, "onnx", f"decoder_model_merged{sfx}.onnx"),
        ["inputs_embeds", "attention_mask", "position_ids", "num_logits_to_keep", *kv_names(n_layers, "past_key_values")],
        ["logits", *kv_names(n_layers, "present")],
        shapes,
    )
    return written


def scorer_file(out_dir: str, dtype: str) -> str:
    return os.path.join(out_dir, "onnx", f"mlm_scorer{suffix(dtype)}.onnx")


def export_scorer(model: LlavaModel, out_dir: str, dtype: str, fused_attention: bool = True) -> list[str]:
    """Writes onnx/mlm_scorer{suffix}.onnx, the scorer's one-pass graph (scorer_graph.py); returns the paths."""
    os.makedirs(os.path.join(out_dir, "onnx"), exist_ok=True)
    tdtype = ONNX_DTYPES[dtype]
    m = copy.deepcopy(model).to(tdtype) if tdtype != torch.float32 else model
    graph = ScorerGraph(m, fused_attention=fused_attention).eval()
    size = m.vision_tower.config.image_size
    pix = torch.randn(2, 3, size, size)
    with torch.no_grad():
        n_img = graph.vision(pix.to(tdtype)).shape[1]
    # A small valid packing: 3 prefix ids, the image, 2 more prefix ids, then one branch of 3 suffix ids and 2 chains.
    vocab = m.lm.config.vocab_size
    text = torch.randint(0, vocab, (2, 10))
    ids = torch.cat([text[:, :3], torch.full((2, n_img), -200), text[:, 3:]], 1)
    length = ids.shape[1]
    pos = torch.arange(length)[None].repeat(2, 1)
    branch = torch.zeros(2, length, dtype=torch.int64)
    branch[:, -5:] = 1
    chain = torch.zeros(2, length, dtype=torch.int64)
    chain[:, -2], chain[:, -1] = 1, 2
    pos[:, -1] = pos[:, -2]
    readout = torch.tensor([[length - 3, length - 2, length - 1]] * 2)
    token_ids = torch.arange(4)
    batch = Dim("batch_size", min=1, max=1024)
    seq = Dim("sequence_length", min=2, max=65536)
    rows = Dim("readout_rows", min=1, max=65536)
    k = Dim("readout_tokens", min=1, max=65536)
    return _export(
        graph,
        (pix, ids, pos, branch, chain, readout, token_ids),
        scorer_file(out_dir, dtype),
        INPUT_NAMES,
        OUTPUT_NAMES,
        ({0: batch}, {0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch, 1: rows}, {0: k}),
    )
