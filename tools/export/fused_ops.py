"""onnxruntime's fused operators as torch custom ops that the dynamo exporter lowers to com.microsoft nodes:
MultiHeadAttention and RotaryEmbedding.

The decoder keeps its explicit KV cache (past + new keys concatenated in the graph, presents returned as they are):
only the attention itself (QK^T, scale, additive mask bias, softmax, x V) becomes one node, fed the full keys and
values of the step. Any padding layout works, because the mask is an arbitrary additive bias [B, 1, S, total]. The
GroupQueryAttention op would also spare repeating the KV heads, but onnxruntime's CPU kernel refuses a batch of
several rows with more than one new token on top of a past ("batch_size must be 1 when sequence_length > 1 and past
context is given"), which is exactly the scorer's suffix step.
"""

from __future__ import annotations

import onnxscript
import torch
from onnx.defs import OpSchema

_MSFT = onnxscript.values.Opset("com.microsoft", 1)
_OPTIONAL = OpSchema.FormalParameterOption.Optional
# The onnx package does not know onnxruntime's contrib schemas; this is the subset of inputs used here.
_MHA_SCHEMA = OpSchema(
    "MultiHeadAttention",
    "com.microsoft",
    1,
    inputs=[
        OpSchema.FormalParameter("query", "T"),
        OpSchema.FormalParameter("key", "T"),
        OpSchema.FormalParameter("value", "T"),
        OpSchema.FormalParameter("bias", "T", param_option=_OPTIONAL),
        OpSchema.FormalParameter("key_padding_mask", "M", param_option=_OPTIONAL),
        OpSchema.FormalParameter("attention_bias", "T", param_option=_OPTIONAL),
    ],
    outputs=[OpSchema.FormalParameter("output", "T")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], "")],
    attributes=[
        OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, ""),
        OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, ""),
    ],
)
_MHA = onnxscript.values.Op(_MSFT, "MultiHeadAttention", _MHA_SCHEMA)
_ROTARY_SCHEMA = OpSchema(
    "RotaryEmbedding",
    "com.microsoft",
    1,
    inputs=[
        OpSchema.FormalParameter("input", "T"),
        OpSchema.FormalParameter("position_ids", "M"),
        OpSchema.FormalParameter("cos_cache", "T"),
        OpSchema.FormalParameter("sin_cache", "T"),
    ],
    outputs=[OpSchema.FormalParameter("output", "T")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int64)"], "")],
    attributes=[OpSchema.Attribute("interleaved", OpSchema.AttrType.INT, "")],
)
_ROTARY = onnxscript.values.Op(_MSFT, "RotaryEmbedding", _ROTARY_SCHEMA)


@torch.library.custom_op("mlmf::attention", mutates_args=())
def attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    """softmax(Q K^T * scale + bias) V with Q [B, S, N*D], K and V [B, N, T, D], bias [B, 1, S, T] -> [B, S, N*D].

    The eager version keeps the scores and softmax in fp32, as transformers' eager attention does."""
    b, s, _ = query.shape
    q = query.view(b, s, num_heads, -1).transpose(1, 2)
    scores = torch.matmul(q, key.transpose(2, 3)).float() * scale + bias.float()
    probs = torch.softmax(scores, dim=-1).to(query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).reshape(b, s, -1)


@attention.register_fake
def _(query, key, value, bias, num_heads, scale):
    return torch.empty_like(query)


def _attention_onnx(query, key, value, bias, num_heads: int, scale: float):
    return _MHA(query, key, value, None, None, bias, num_heads=num_heads, scale=scale)


@torch.library.custom_op("mlmf::rotary", mutates_args=())
def rotary(x: torch.Tensor, position_ids: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, rotate-half (non-interleaved) form, of x [B, N, S, D] at position_ids [B, S], from
    caches [max_positions, D/2]: x * cos + rotate_half(x) * sin, as transformers' Qwen2 and LLaMA apply it."""
    cos = torch.cat([cos_cache[position_ids], cos_cache[position_ids]], dim=-1)[:, None]
    sin = torch.cat([sin_cache[position_ids], sin_cache[position_ids]], dim=-1)[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


@rotary.register_fake
def _(x, position_ids, cos_cache, sin_cache):
    return torch.empty_like(x)


def _rotary_onnx(x, position_ids, cos_cache, sin_cache):
    return _ROTARY(x, position_ids, cos_cache, sin_cache, interleaved=0)


# Passed to torch.onnx.export(custom_translation_table=...).
TRANSLATIONS = {torch.ops.mlmf.attention.default: _attention_onnx, torch.ops.mlmf.rotary.default: _rotary_onnx}
