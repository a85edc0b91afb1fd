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
_FLOATS = ["tensor(float)", "tensor(float16)"]


def _contrib_op(name: str, inputs: list[tuple[str, str, bool]], index_type: str, attributes: dict[str, OpSchema.AttrType]):
    """An onnxscript op for an onnxruntime contrib operator. The onnx package does not know those schemas; each is
    declared with the subset of inputs used here: (name, type var, optional); T = float/float16, M = index_type."""
    optional = OpSchema.FormalParameterOption.Optional
    single = OpSchema.FormalParameterOption.Single
    schema = OpSchema(
        name,
        "com.microsoft",
        1,
        inputs=[OpSchema.FormalParameter(n, t, param_option=optional if opt else single) for n, t, opt in inputs],
        outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", _FLOATS, ""), ("M", [index_type], "")],
        attributes=[OpSchema.Attribute(a, kind, "") for a, kind in attributes.items()],
    )
    return onnxscript.values.Op(_MSFT, name, schema)


_MHA = _contrib_op(
    "MultiHeadAttention",
    [
        ("query", "T", False),
        ("key", "T", False),
        ("value", "T", False),
        ("bias", "T", True),
        ("key_padding_mask", "M", True),
        ("attention_bias", "T", True),
    ],
    "tensor(int32)",
    {"num_heads": OpSchema.AttrType.INT, "scale": OpSchema.AttrType.FLOAT},
)
_ROTARY = _contrib_op(
    "RotaryEmbedding",
    [("input", "T", False), ("position_ids", "M", False), ("cos_cache", "T", False), ("sin_cache", "T", False)],
    "tensor(int64)",
    {"interleaved": OpSchema.AttrType.INT},
)


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
