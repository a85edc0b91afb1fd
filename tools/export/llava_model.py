"""The LLaVA-style MLM-filter model in PyTorch: the reference forward pass and the three export graphs.

Architecture (Victorwz/LLaVA-Unified llava/model): a vision tower (SigLIP or CLIP) whose hidden state at
`mm_vision_select_layer` is taken (CLIP 'patch' features drop the CLS token), a projector (`aapool_mlp`: adaptive
average pool of the patch grid to sqrt(N)xsqrt(N) then Linear-GELU-Linear; `mlpNx_gelu`: Linear(-GELU-Linear)*),
and a decoder-only LM (Qwen2 or LLaMA) whose input embeddings get the image features spliced in at the -200 slot.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

import fused_ops
from prompts import IMAGE_TOKEN_INDEX

# Rows of the fused rotary embedding's cos/sin tables (positions the exported decoder accepts).
ROTARY_MAX_POSITIONS = 4096


class AvgPoolProjector(nn.Module):
    """`aapool_mlp`: parameter names match LLaVA-Unified (`mlp_projector.0`, `mlp_projector.2`)."""

    def __init__(self, mm_hidden: int, hidden: int, num_tokens: int, depth: int = 2):
        super().__init__()
        self.side = int(round(math.sqrt(num_tokens)))
        if self.side * self.side != num_tokens:
            raise ValueError(f"aapool_mlp needs a square number of image tokens, got {num_tokens}")
        layers: list[nn.Module] = [nn.Linear(mm_hidden, hidden)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        self.mlp_projector = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((self.side, self.side))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, n, d = feats.shape
        grid = int(round(math.sqrt(n)))
        x = feats.transpose(1, 2).reshape(b, d, grid, grid)
        x = self.pool(x).reshape(b, d, self.side * self.side).transpose(1, 2)
        return self.mlp_projector(x)


def adaptive_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] averaging matrix with PyTorch's adaptive pooling bins (floor start, ceil end)."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def mlp_projector(mm_hidden: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(mm_hidden, hidden)]
    for _ in range(1, depth):
        layers += [nn.GELU(), nn.Linear(hidden, hidden)]
    return nn.Sequential(*layers)


@dataclass
class LlavaSpec:
    """What the export needs to know beyond the HF sub-configs."""

    family: str  # 'llava_qwen' | 'llava_llama'
    conv_format: str  # 'qwen_instruct' | 'llava_v1'
    projector_type: str  # 'aapool_mlp' | 'mlp2x_gelu' | 'linear'
    select_layer: int
    select_feature: str  # 'patch' | 'cls_patch'
    num_image_tokens: int
    pad_to_square: bool


class LlavaModel(nn.Module):
    """Vision tower + projector + causal LM with HF modules: the reference implementation."""

    def __init__(self, spec: LlavaSpec, vision_config, lm_config):
        super().__init__()
        self.spec = spec
        if isinstance(vision_config, SiglipVisionConfig):
            self.vision_tower = SiglipVisionModel(vision_config)
        elif isinstance(vision_config, CLIPVisionConfig):
            self.vision_tower = CLIPVisionModel(vision_config)
        else:
            raise TypeError(f"unsupported vision config {type(vision_config).__name__}")
        if isinstance(lm_config, Qwen2Config):
            self.lm = Qwen2ForCausalLM(lm_config)
        elif isinstance(lm_config, LlamaConfig):
            self.lm = LlamaForCausalLM(lm_config)
        else:
            raise TypeError(f"unsupported LM config {type(lm_config).__name__}")
        mm_hidden, hidden = vision_config.hidden_size, lm_config.hidden_size
        if spec.projector_type == "aapool_mlp":
            self.mm_projector: nn.Module = AvgPoolProjector(mm_hidden, hidden, spec.num_image_tokens)
        elif spec.projector_type == "linear":
            self.mm_projector = nn.Linear(mm_hidden, hidden)
        else:
            m = re.fullmatch(r"mlp(\d+)x_gelu", spec.projector_type)
            if not m:
                raise ValueError(f"unsupported mm_projector_type {spec.projector_type}")
            self.mm_projector = mlp_projector(mm_hidden, hidden, int(m.group(1)))

    # -- reference path (LLaVA semantics) --------------------------------------------------------------------------
    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(pixel_values, output_hidden_states=True)
        if self.spec.select_feature == "cls_patch":
            feats = out.pooler_output
        else:
            feats = out.hidden_states[self.spec.select_layer]
            if isinstance(self.vision_tower, CLIPVisionModel):
                feats = feats[:, 1:]
        return feats

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.mm_projector(self.vision_features(pixel_values))

    def splice(self, input_ids: list[int], image_features: torch.Tensor) -> torch.Tensor:
        """[1, S', H] embeddings with each -200 replaced by the image's feature rows (as prepare_inputs_... does)."""
        emb = self.lm.get_input_embeddings()
        parts, run = [], []
        for tok in input_ids:
            if tok == IMAGE_TOKEN_INDEX:
                if run:
                    parts.append(emb(torch.tensor(run)))
                    run = []
                parts.append(image_features)
            else:
                run.append(tok)
        if run:
            parts.append(emb(torch.tensor(run)))
        return torch.cat(parts, 0)[None]

    @torch.no_grad()
    def reference_logits(self, input_ids: list[int], pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits [S', V] of the full sequence, no KV cache (what generate's first step sees)."""
        feats = self.encode_images(pixel_values[None])[0]
        embeds = self.splice(input_ids, feats)
        return self.lm(inputs_embeds=embeds).logits[0]

    @torch.no_grad()
    def reference_greedy(self, input_ids: list[int], pixel_values: torch.Tensor, n: int) -> list[int]:
        """Greedy decoding by re-running the full sequence each step (slow, cache-free, unambiguous)."""
        feats = self.encode_images(pixel_values[None])[0]
        embeds = self.splice(input_ids, feats)
        emb = self.lm.get_input_embeddings()
        out: list[int] = []
        eos = self.eos_ids()
        for _ in range(n):
            tok = int(self.lm(inputs_embeds=embeds).logits[0, -1].argmax())
            out.append(tok)
            if tok in eos:
                break
            embeds = torch.cat([embeds, emb(torch.tensor([[tok]]))], 1)
        return out

    def eos_ids(self) -> set[int]:
        e = self.lm.config.eos_token_id
        if e is None:
            return set()
        return set(e) if isinstance(e, (list, tuple)) else {int(e)}


# -- export graphs ---------------------------------------------------------------------------------------------------


class VisionEncoderGraph(nn.Module):
    """pixel_values [B,3,H,W] -> image_features [B,N,hidden]. Runs only the tower layers the selection needs."""

    def __init__(self, model: LlavaModel):
        super().__init__()
        self.model = model
        tower = getattr(model.vision_tower, "vision_model", model.vision_tower)
        n_layers = len(tower.encoder.layers)
        sel = model.spec.select_layer
        # hidden_states[k] is the output after k layers (k=0: embeddings); negative k counts from n_layers.
        self.keep = sel if sel >= 0 else n_layers + 1 + sel
        if model.spec.select_feature == "cls_patch":
            raise NotImplementedError("cls_patch features are not supported by the exporter")
        self.is_clip = isinstance(model.vision_tower, CLIPVisionModel)
        proj = model.mm_projector
        if isinstance(proj, AvgPoolProjector):
            cfg = model.vision_tower.config
            grid = cfg.image_size // cfg.patch_size
            # Adaptive pooling as two fixed matrix products: exact, and exports for grids that do not divide evenly
            # (SigLIP-384/14 has a 27x27 grid pooled to 12x12).
            p = adaptive_pool_matrix(grid, proj.side)
            self.register_buffer("pool_rows", p, persistent=False)
            self.grid = grid

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vm = getattr(self.model.vision_tower, "vision_model", self.model.vision_tower)
        h = vm.embeddings(pixel_values)
        if self.is_clip:
            h = vm.pre_layrnorm(h)
        for layer in vm.encoder.layers[: self.keep]:
            out = layer(h, None)
            h = out[0] if isinstance(out, tuple) else out
        if self.is_clip:
            h = h[:, 1:]
        proj = self.model.mm_projector
        if isinstance(proj, AvgPoolProjector):
            b, n, d = h.shape
            p = self.pool_rows.to(h.dtype)
            x = h.reshape(b, self.grid, self.grid, d)
            # rows then columns: out[i,j] = sum_{r,c} p[i,r] p[j,c] x[r,c]
            x = torch.einsum("ir,brcd->bicd", p, x)
            x = torch.einsum("jc,bicd->bijd", p, x)
            x = x.reshape(b, proj.side * proj.side, d)
            return proj.mlp_projector(x)
        return proj(h)


class EmbedTokensGraph(nn.Module):
    def __init__(self, model: LlavaModel):
        super().__init__()
        self.embed = model.lm.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


def rope_parameters(cfg) -> dict:
    """The rotary parameters of an HF config, whichever way the transformers version spells them: `rope_parameters`
    (transformers 5) or `rope_theta` + `rope_scaling` (4.x, and the released checkpoints' config.json, where Llama-3.2
    names the type under `rope_type` or the older `type`)."""
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    scaling = getattr(cfg, "rope_scaling", None) or {}
    for k, v in scaling.items():
        rope.setdefault(k, v)
    rope.setdefault("rope_theta", getattr(cfg, "rope_theta", None) or 10000.0)
    rope["rope_type"] = rope.get("rope_type") or rope.get("type") or "default"
    return rope


def rope_inv_freq(cfg, head_dim: int) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding: theta^(-2i/d), and for rope_type `llama3` (Llama-3.1/3.2) the
    wavelength-dependent rescaling transformers applies (modeling_rope_utils `_compute_llama3_parameters`):
    wavelengths shorter than original_max / high_freq_factor stay, those longer than original_max / low_freq_factor
    are divided by `factor`, and the band between is interpolated with smooth = (original_max / wavelength -
    low_freq_factor) / (high_freq_factor - low_freq_factor). Its attention factor is 1 (cos/sin unscaled)."""
    rope = rope_parameters(cfg)
    theta = float(rope["rope_theta"])
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = rope["rope_type"]
    if kind == "default":
        return inv
    if kind != "llama3":
        raise NotImplementedError(f"rope_type {kind!r} is not supported by the exporter (default and llama3 are)")
    factor = float(rope["factor"])
    low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_len = float(rope.get("original_max_position_embeddings") or cfg.max_position_embeddings)
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class DecoderGraph(nn.Module):
    """(inputs_embeds, attention_mask, position_ids, num_logits_to_keep, past k/v...) -> (logits, present k/v...).

    A plain re-statement of the Qwen2 / LLaMA decoder over the HF module's own parameters, so that the KV cache is
    explicit tensors in and out. attention_mask covers past + current positions ([B, past+S], 1 = attend);
    causality is by sequence index, so left padding only needs the mask and matching position_ids.

    num_logits_to_keep (int64 scalar, transformers' meaning): 0 returns logits for every position, n > 0 for the last n
    only. A scorer reads one position per row, and lm_head over every position ([B, S, V] with V = 152k for Qwen2.5)
    costs more than the layers themselves in a prefill of a small model, and that much memory besides.
    """

    def __init__(self, model: LlavaModel, fused_attention: bool = True):
        super().__init__()
        # True: attention and rotary embedding as com.microsoft MultiHeadAttention / RotaryEmbedding nodes
        # (fused_ops.py); False: plain ONNX ops.
        self.fused_attention = fused_attention
        lm = model.lm
        cfg = lm.config
        self.layers = lm.model.layers
        self.norm = lm.model.norm
        self.lm_head = lm.lm_head
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        inv = rope_inv_freq(cfg, self.head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)
        # The fused RotaryEmbedding reads cos/sin from tables indexed by position. The scorer's positions stay under
        # ~2.7k (prompts truncated to 2040 ids as the reference does, plus image tokens and a few digits); a fixed
        # table length, not the config's max_position_embeddings, so no checkpoint can make a long caption fail.
        self.rotary_positions = ROTARY_MAX_POSITIONS
        table = torch.arange(self.rotary_positions, dtype=torch.float32)[:, None] * inv[None, :]
        self.register_buffer("cos_table", table.cos(), persistent=False)
        self.register_buffer("sin_table", table.sin(), persistent=False)

    def _rms(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        # x / sqrt(...) rather than x * rsqrt(...): onnxruntime fuses this form into (Skip)SimplifiedLayerNormalization
        # when it loads the graph; the rsqrt form stays five separate ops per norm.
        x32 = x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return norm.weight * x32.to(dtype)

    def forward(self, inputs_embeds, attention_mask, position_ids, num_logits_to_keep, *past):
        b, s, _ = inputs_embeds.shape
        past_len = past[0].shape[2]
        total = past_len + s
        q_idx = torch.arange(s, device=inputs_embeds.device) + past_len
        k_idx = torch.arange(total, device=inputs_embeds.device)
        allowed = (k_idx[None, :] <= q_idx[:, None])[None, None] & (attention_mask[:, None, None, :] > 0)
        h, presents = self.run_layers(inputs_embeds, position_ids, allowed, past)
        h = self._rms(self.norm, h)
        # The kept length depends on the input's value: an unbacked size for torch.export, bounded by these checks.
        start = torch.where(
            num_logits_to_keep > 0, torch.clamp(s - num_logits_to_keep, min=0), torch.zeros_like(num_logits_to_keep)
        ).item()
        torch._check(start >= 0)
        torch._check(start <= s)
        return (self.lm_head(h.narrow(1, start, s - start)), *presents)

    def run_layers(self, h: torch.Tensor, position_ids: torch.Tensor, allowed: torch.Tensor, past=(), rows=None):
        """The decoder layers over h [B, S, H]. allowed [B, 1, S, past+S] (bool) says which keys each query sees;
        past: per layer key, value [B, kv_heads, past, D] (empty tuple: none). Returns (h, presents).

        rows [B, R] (positions): only those positions' outputs are wanted. The last layer then computes its keys and
        values for every position but its query, attention output and MLP for those rows only, and h comes back as
        [B, R, H]: exact for those rows, and it spares the last layer's work on every other position (the scorer
        reads ~50 of ~1000 positions per pair)."""
        b, s, _ = h.shape
        dtype = h.dtype
        total = allowed.shape[-1]
        if self.fused_attention:
            cos_table, sin_table = self.cos_table.to(dtype), self.sin_table.to(dtype)
        else:
            freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]
            emb = torch.cat([freqs, freqs], dim=-1)
            cos = emb.cos().to(dtype)[:, None]
            sin = emb.sin().to(dtype)[:, None]
        scale = self.head_dim**-0.5
        rep = self.n_heads // self.n_kv
        neg = torch.finfo(dtype).min
        # Half the dtype's minimum: finite after adding any score, so a fully masked row (a pad's query) stays a
        # uniform softmax instead of NaN, and no NaN can reach real rows through the pads' keys and values.
        bias = torch.where(allowed, 0.0, neg / 2).to(dtype) if self.fused_attention else None

        presents = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = self._rms(layer.input_layernorm, h)
            k = attn.k_proj(x).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
            q_pos = position_ids
            if rows is not None and i == last:
                # From here on only the wanted rows: queries, residual stream, mask rows.
                s = rows.shape[1]
                x = torch.gather(x, 1, rows[:, :, None].expand(-1, -1, x.shape[-1]))
                h = torch.gather(h, 1, rows[:, :, None].expand(-1, -1, h.shape[-1]))
                q_pos = torch.gather(position_ids, 1, rows)
                allowed = torch.gather(allowed, 2, rows[:, None, :, None].expand(-1, 1, -1, allowed.shape[-1]))
                if bias is not None:
                    bias = torch.gather(bias, 2, rows[:, None, :, None].expand(-1, 1, -1, bias.shape[-1]))
            q = attn.q_proj(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
            if self.fused_attention:
                q = fused_ops.rotary(q, q_pos, cos_table, sin_table)
                k = fused_ops.rotary(k, position_ids, cos_table, sin_table)
            else:
                if rows is not None and i == last:
                    q_freqs = q_pos[:, :, None].float() * self.inv_freq[None, None, :]
                    q_emb = torch.cat([q_freqs, q_freqs], dim=-1)
                    q = q * q_emb.cos().to(dtype)[:, None] + _rotate_half(q) * q_emb.sin().to(dtype)[:, None]
                else:
                    q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
            if past:
                k = torch.cat([past[2 * i], k], dim=2)
                v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            kr = k[:, :, None].expand(b, self.n_kv, rep, total, self.head_dim).reshape(b, self.n_heads, total, -1)
            vr = v[:, :, None].expand(b, self.n_kv, rep, total, self.head_dim).reshape(b, self.n_heads, total, -1)
            if bias is not None:
                qs = q.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim)
                o = fused_ops.attention(qs, kr, vr, bias, self.n_heads, scale)
            else:
                scores = torch.matmul(q, kr.transpose(2, 3)) * scale
                scores = scores.masked_fill(~allowed, neg)
                probs = torch.softmax(scores.float(), dim=-1).to(dtype)
                o = torch.matmul(probs, vr).transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim)
            h = h + attn.o_proj(o)
            x = self._rms(layer.post_attention_layernorm, h)
            mlp = layer.mlp
            h = h + mlp.down_proj(nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        return h, presents
