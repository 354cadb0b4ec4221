"""Random MS-Diffusion files in the official key layout (torch only: core tests use it too).

Layout as msdiffusion/models/model.py saves it: ``image_proj`` (the grounding Resampler of
msdiffusion/models/projection.py), ``ms_adapter`` (the attention processors' ModuleList: attn2 at the odd
indices 1, 3, ..., each ``to_k_ip`` / ``to_v_ip`` [hidden, context]) and ``dummy_image_tokens`` [1, 4, context].
"""

from __future__ import annotations

import math

import torch

MS_REAL = {"dim": 1280, "depth": 4, "heads": 20, "queries": 16, "feature_dim": 1664, "phrase_dim": 768, "context": 2048}


def sdxl_layer_widths():
    """{IP layer number: attn2 width} of SDXL (the table in docs/subject-adapter-format.md): input 4, 5 (2 blocks
    of 640), input 7, 8 (10 of 1280), output 0-2 (10 of 1280), output 3-5 (2 of 640), middle (10 of 1280)."""
    widths = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10
    return {2 * n + 1: w for n, w in enumerate(widths)}


def _rand(g, *shape):
    return torch.randn(shape, generator=g) / shape[-1] ** 0.5


def _norm(g, prefix, width, sd):
    sd[prefix + ".weight"] = 1 + 0.1 * torch.randn(width, generator=g)
    sd[prefix + ".bias"] = 0.1 * torch.randn(width, generator=g)


def ms_image_proj(g, dim, depth, heads, queries, feature_dim, phrase_dim, context, ff_mult=4):
    """image_proj.* of the grounding Resampler: Resampler(dim, depth, dim_head=64, heads, num_queries,
    embedding_dim=feature_dim, output_dim=context, ff_mult, latent_init_mode="grounding", phrase_embeddings_dim)."""
    inner = heads * 64
    grounding_in = phrase_dim + 64
    sd = {"grounding_latents": torch.randn(1, queries, dim, generator=g) / dim ** 0.5,
          "latent_proj.0.weight": _rand(g, 2 * grounding_in, grounding_in),
          "latent_proj.0.bias": 0.02 * torch.randn(2 * grounding_in, generator=g),
          "latent_proj.2.weight": _rand(g, queries * dim, 2 * grounding_in),
          "latent_proj.2.bias": 0.02 * torch.randn(queries * dim, generator=g),
          "proj_in.weight": _rand(g, dim, feature_dim), "proj_in.bias": 0.02 * torch.randn(dim, generator=g),
          "proj_out.weight": _rand(g, context, dim), "proj_out.bias": 0.02 * torch.randn(context, generator=g)}
    for prefix, width in (("latent_norm", dim), ("attention_norm", dim), ("norm_out", context)):
        _norm(g, prefix, width, sd)
    for i in range(depth):
        p = f"layers.{i}"
        _norm(g, p + ".0.norm1", dim, sd)
        _norm(g, p + ".0.norm2", dim, sd)
        sd[p + ".0.to_q.weight"] = _rand(g, inner, dim)
        sd[p + ".0.to_kv.weight"] = _rand(g, 2 * inner, dim)
        sd[p + ".0.to_out.weight"] = _rand(g, dim, inner)
        _norm(g, p + ".1.0", dim, sd)
        sd[p + ".1.1.weight"] = _rand(g, ff_mult * dim, dim)
        sd[p + ".1.3.weight"] = _rand(g, dim, ff_mult * dim)
    return sd


def ms_layers(g, widths, context):
    """ms_adapter.* for {IP layer number: attn2 width}."""
    sd = {}
    for number, hidden in widths.items():
        sd[f"{number}.to_k_ip.weight"] = _rand(g, hidden, context)
        sd[f"{number}.to_v_ip.weight"] = _rand(g, hidden, context)
    return sd


def ms_flat(nested):
    """The safetensors conversion: flat keys image_proj.*, ms_adapter.*, dummy_image_tokens."""
    out = {f"image_proj.{k}": v for k, v in nested["image_proj"].items()}
    out.update({f"ms_adapter.{k}": v for k, v in nested["ms_adapter"].items()})
    out["dummy_image_tokens"] = nested["dummy_image_tokens"].detach()
    return out


# --- dense references of the official processor (msdiffusion/models/attention_processor.py) ----------

def official_box_masks(boxes, height, width):
    """prepare_attention_mask_qk's rasterisation (floor start, ceil end, y (x) x outer product, row-major),
    with the square grid's one side replaced by each axis's own size."""
    masks = []
    for x0, y0, x1, y1 in boxes:
        xs, ys = torch.arange(width), torch.arange(height)
        x_mask = ((xs >= math.floor(round(x0 * width, 6))) & (xs < math.ceil(round(x1 * width, 6)))).double()
        y_mask = ((ys >= math.floor(round(y0 * height, 6))) & (ys < math.ceil(round(y1 * height, 6)))).double()
        masks.append(torch.outer(y_mask, x_mask).reshape(-1))
    return torch.stack(masks)                                                   # [S, L]


def official_ip_attention(q, keys, values, boxes, height, width, heads, tokens, dummy, subject_scales):
    """MaskedIPAttnProcessor2_0's image branch (need_image_attention_map path): scores = q k^T * d^-0.5 + bias,
    softmax, background rows zeroed, subject_scales on the probabilities, then @ V."""
    masks = official_box_masks(boxes, height, width)
    background = torch.ones(height * width, dtype=torch.float64)
    for m in masks:
        background = torch.clamp(background - m, min=0)
    image_bias = (1 - masks.t().repeat_interleave(tokens, dim=-1)) * -10000.0
    dummy_bias = (1 - background[:, None].repeat_interleave(dummy, dim=-1)) * -10000.0
    bias = torch.cat([dummy_bias, image_bias], dim=-1)
    scales = torch.cat([torch.ones(dummy), torch.tensor(subject_scales, dtype=torch.float64).repeat_interleave(tokens)])
    b, length, channels = q.shape
    d = channels // heads
    out = torch.zeros(b, length, channels, dtype=torch.float64)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        probs = torch.softmax(q[..., sl].double() @ keys[:, sl].double().t() * d ** -0.5 + bias, dim=-1)
        probs = torch.where(background.bool()[None, :, None], torch.zeros_like(probs), probs) * scales.double()
        out[..., sl] = probs @ values[:, sl].double()
    return out
