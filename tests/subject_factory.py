"""Random subject adapters in the exact key layouts of the real files, sized for a tiny test model.

IP-Adapter layouts as in tencent-ailab/IP-Adapter (``image_proj.*``, ``ip_adapter.{2n+1}.to_{k,v}_ip.weight``
in diffusers' processor order); the pack's subjref.v1 layout from core/subjref_adapter.py.
"""

from __future__ import annotations

import torch

from tiny_models import VISION_IMAGE, VISION_PATCH, VISION_PROJ, VISION_WIDTH

RESAMPLER_WIDTH, RESAMPLER_DEPTH = 128, 2


def _rand(g, *shape, fan_in=None):
    return torch.randn(shape, generator=g) / (fan_in or shape[-1]) ** 0.5


def _norm(g, prefix, width, sd):
    sd[prefix + ".weight"] = 1 + 0.1 * torch.randn(width, generator=g)
    sd[prefix + ".bias"] = 0.1 * torch.randn(width, generator=g)


def layer_widths(pack, model):
    """({IP layer number: attn2 width}, context width) of ``model``."""
    layers = pack.nodes.model_patch.cross_attention_layers(model)
    keys = {pack.core.subject_layers.layer_key(p): m.to_k.out_features for p, m in layers.items()}
    numbers = pack.core.subject_layers.ip_layer_numbers(keys)
    _, context = pack.nodes.model_patch.model_family(model)
    return {numbers[k]: w for k, w in keys.items()}, context


def ip_state_dict(pack, model, variant="base", seed=0, tokens=4, feature_dim=None):
    """A flattened IP-Adapter state dict fitting ``model``'s cross-attention layers."""
    g = torch.Generator().manual_seed(seed)
    widths, context = layer_widths(pack, model)
    sd = {}
    if variant == "base":
        e = feature_dim or VISION_PROJ
        sd["image_proj.proj.weight"] = _rand(g, tokens * context, e)
        sd["image_proj.proj.bias"] = 0.02 * torch.randn(tokens * context, generator=g)
        _norm(g, "image_proj.norm", context, sd)
    elif variant == "plus":
        e, w = feature_dim or VISION_WIDTH, RESAMPLER_WIDTH
        sd["image_proj.latents"] = torch.randn(1, 16, w, generator=g) / w ** 0.5
        sd["image_proj.proj_in.weight"], sd["image_proj.proj_in.bias"] = _rand(g, w, e), torch.zeros(w)
        for i in range(RESAMPLER_DEPTH):
            p = f"image_proj.layers.{i}"
            _norm(g, p + ".0.norm1", w, sd)
            _norm(g, p + ".0.norm2", w, sd)
            sd[p + ".0.to_q.weight"] = _rand(g, w, w)
            sd[p + ".0.to_kv.weight"] = _rand(g, 2 * w, w)
            sd[p + ".0.to_out.weight"] = _rand(g, w, w)
            _norm(g, p + ".1.0", w, sd)
            sd[p + ".1.1.weight"] = _rand(g, 4 * w, w)
            sd[p + ".1.3.weight"] = _rand(g, w, 4 * w)
        sd["image_proj.proj_out.weight"], sd["image_proj.proj_out.bias"] = _rand(g, context, w), torch.zeros(context)
        _norm(g, "image_proj.norm_out", context, sd)
    elif variant == "full":
        e = feature_dim or VISION_WIDTH
        sd["image_proj.proj.0.weight"], sd["image_proj.proj.0.bias"] = _rand(g, e, e), torch.zeros(e)
        sd["image_proj.proj.2.weight"], sd["image_proj.proj.2.bias"] = _rand(g, context, e), torch.zeros(context)
        _norm(g, "image_proj.proj.3", context, sd)
    elif variant == "faceid":
        sd["image_proj.proj.0.weight"], sd["image_proj.proj.0.bias"] = _rand(g, 64, 512), torch.zeros(64)
        sd["image_proj.proj.2.weight"], sd["image_proj.proj.2.bias"] = _rand(g, 4 * context, 64), torch.zeros(4 * context)
        _norm(g, "image_proj.norm", context, sd)
    else:
        raise ValueError(variant)
    for number, hidden in widths.items():
        sd[f"ip_adapter.{number}.to_k_ip.weight"] = _rand(g, hidden, context)
        sd[f"ip_adapter.{number}.to_v_ip.weight"] = _rand(g, hidden, context)
    return sd


def subjref_adapter(pack, model, clip, preset="lite", seed=0, max_subjects=2, gates=0.5):
    """A SubjectAdapter with random weights and open gates, fitting ``model`` and ``clip``."""
    from host import tower_widths
    core = pack.core.subjref_adapter
    layers = pack.nodes.model_patch.cross_attention_layers(model)
    _, context = pack.nodes.model_patch.model_family(model)
    family, _ = pack.nodes.model_patch.model_family(model)
    conv_in = model.get_model_object("diffusion_model").input_blocks[0][0]
    config = core.AdapterConfig(
        family=family, preset=preset, vision_width=VISION_WIDTH, vision_embed_dim=VISION_PROJ,
        n_patch=(VISION_IMAGE // VISION_PATCH) ** 2, token_dim=context, hidden_dim=48, heads=2,
        max_subjects=max_subjects, model_channels=conv_in.out_channels,
        blocks=tuple(sorted((p[: -len(".attn2")], m.to_q.in_features) for p, m in layers.items())),
        towers=tuple(sorted((t[-1], w) for t, w in tower_widths(clip).items())))
    return randomise_adapter_(core.SubjectAdapter(config), seed, gates)


def randomise_adapter_(adapter, seed=0, gates=0.5):
    """Random weights as a trained adapter might have them, with the gates open to ``gates``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                p.fill_(gates)
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return adapter.eval().requires_grad_(False)


def reference_image(seed=0, size=40):
    """A random photo [1, H, W, 3] and a subject mask [1, H, W] (a filled ellipse)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, size, size + 8, 3, generator=g)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size + 8), indexing="ij")
    mask = (((xs - 0.1) / 0.6) ** 2 + (ys / 0.7) ** 2 <= 1).float()[None]
    return image, mask



# --- MS-Diffusion: the generators are torch-only (tests/ms_factory.py); this one fits a tiny host model --

def ms_nested(pack, model, clip, seed=0, feature_dim=None, dim=128, heads=2, depth=2, queries=16):
    """{"image_proj": ..., "ms_adapter": ..., "dummy_image_tokens": Parameter}, the official pickle's three
    entries, fitting ``model`` (its attn2 widths and context) and ``clip`` (its CLIP-L width)."""
    from host import tower_widths
    from ms_factory import ms_image_proj, ms_layers
    g = torch.Generator().manual_seed(seed)
    widths, context = layer_widths(pack, model)
    phrase = tower_widths(clip)["clip_l"]
    image_proj = ms_image_proj(g, dim, depth, heads, queries, feature_dim or VISION_WIDTH, phrase, context)
    return {"image_proj": image_proj, "ms_adapter": ms_layers(g, widths, context),
            "dummy_image_tokens": torch.nn.Parameter(torch.randn(1, 4, context, generator=g))}
