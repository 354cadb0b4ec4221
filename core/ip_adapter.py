"""IP-Adapter and IP-Adapter-Plus files (tencent-ailab/IP-Adapter layouts): detection and modules.

A file holds ``image_proj.*`` (CLIP-vision features -> T image tokens of the text context's width)
and ``ip_adapter.{2n+1}.to_k_ip.weight`` / ``.to_v_ip.weight`` [hidden_n, context_dim], one pair per
cross-attention layer n in IP order (subject_layers.py). Decoupled cross-attention (IP-Adapter Eq. 5):

    Z = Attention(Q, K_text, V_text) + w * Attention(Q, W_k^n c_img, W_v^n c_img)

Variants (image_proj layout -> feature it reads):
    base  proj [T*D, E] + norm [D]                      image_embeds [B, E]          (T = 4)
    plus  Resampler: latents [1, T, W], proj_in, layers  penultimate [B, 257, 1280]   (T = 16)
    full  proj.0 [E, E], proj.2 [D, E], proj.3 norm [D]  penultimate [B, 257, E]      (T = every CLIP token)
FaceID files read InsightFace face embeddings, which this pack does not compute: they are refused.
The module's ``state_dict()`` keys are exactly the flattened file's keys.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from .errors import SubjectError

FEATURE_EMBEDS = "image_embeds"
FEATURE_PENULTIMATE = "penultimate_hidden_states"
_IP_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")
FAMILY_BY_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


@dataclass(frozen=True)
class IPAdapterSpec:
    variant: str            # base | plus | full
    context_dim: int        # D, width of the text context (768 SD1.x, 2048 SDXL)
    tokens: int             # T image tokens per subject (0 for "full": one per CLIP-vision token)
    feature: str            # which CLIP-vision output it reads
    feature_dim: int        # E, width of that feature
    hidden: dict            # {layer number 2n+1: attn2 width}

    @property
    def family(self) -> str:
        return FAMILY_BY_CONTEXT.get(self.context_dim, f"context {self.context_dim}")

    def describe(self) -> str:
        return f"IP-Adapter{'' if self.variant == 'base' else '-' + self.variant} ({self.family})"


def split_state_dict(sd: dict) -> tuple[dict, dict] | None:
    """(image_proj, ip_adapter) from a flattened (``image_proj.`` / ``ip_adapter.``) or nested
    (``{"image_proj": {...}, "ip_adapter": {...}}``, the .bin layout) state dict; None if neither."""
    if isinstance(sd.get("image_proj"), dict) and isinstance(sd.get("ip_adapter"), dict):
        return dict(sd["image_proj"]), dict(sd["ip_adapter"])
    image_proj, ip = {}, {}
    for key, value in sd.items():
        if key.startswith("image_proj."):
            image_proj[key[len("image_proj."):]] = value
        elif key.startswith("ip_adapter."):
            ip[key[len("ip_adapter."):]] = value
        elif key.startswith("adapter_modules."):      # checkpoints saved from the training script
            ip[key[len("adapter_modules."):]] = value
    if not image_proj and not ip:
        return None
    return image_proj, ip


def detect(image_proj: dict, ip: dict, name: str) -> IPAdapterSpec:
    """The variant, from key names and shapes (as IP-Adapter's own loaders build the modules)."""
    if any(k.startswith("perceiver_resampler.") for k in image_proj) or any("lora" in k for k in ip) or \
            ("proj.0.weight" in image_proj and "norm.weight" in image_proj and "proj.3.weight" not in image_proj):
        raise SubjectError(f"adapter '{name}' is an IP-Adapter FaceID file; FaceID reads InsightFace face "
                           "embeddings, which this node does not compute. Use an IP-Adapter or "
                           "IP-Adapter-Plus file (ip-adapter_sd15, ip-adapter-plus_sd15, ip-adapter_sdxl_vit-h, ...)")
    numbers = {}
    for key, value in ip.items():
        m = _IP_KEY.match(key)
        if m is None:
            raise SubjectError(f"adapter '{name}': unexpected key 'ip_adapter.{key}'; expected only "
                               "'ip_adapter.<n>.to_k_ip.weight' / '.to_v_ip.weight'")
        if value.ndim != 2:
            raise SubjectError(f"adapter '{name}': 'ip_adapter.{key}' has shape {list(value.shape)}; expected 2-D")
        numbers.setdefault(int(m.group(1)), {})[m.group(2)] = value
    if not numbers:
        raise SubjectError(f"adapter '{name}' has no 'ip_adapter.<n>.to_k_ip.weight' tensors; it is not an IP-Adapter file")
    expected = list(range(1, 2 * len(numbers), 2))
    if sorted(numbers) != expected:
        raise SubjectError(f"adapter '{name}': layer numbers {sorted(numbers)[:6]}... are not 1, 3, 5, ...; the file is damaged")
    incomplete = [n for n, pair in numbers.items() if set(pair) != {"to_k_ip", "to_v_ip"}]
    if incomplete:
        raise SubjectError(f"adapter '{name}': layer {incomplete[0]} needs both to_k_ip and to_v_ip; the file is damaged")
    context_dim = numbers[1]["to_k_ip"].shape[1]
    hidden = {}
    for n, pair in numbers.items():
        if pair["to_k_ip"].shape != pair["to_v_ip"].shape or pair["to_k_ip"].shape[1] != context_dim:
            raise SubjectError(f"adapter '{name}': layer {n} needs to_k_ip and to_v_ip of equal shape "
                               f"[hidden, {context_dim}]")
        hidden[n] = pair["to_k_ip"].shape[0]

    def shape(key):
        if key not in image_proj:
            raise SubjectError(f"adapter '{name}': 'image_proj.{key}' is missing; the file is damaged or of an unknown kind")
        return tuple(image_proj[key].shape)

    if "latents" in image_proj:
        if len(shape("latents")) != 3:
            raise SubjectError(f"adapter '{name}': image_proj.latents has shape {list(shape('latents'))}; expected [1, T, W]")
        _, tokens, _ = shape("latents")
        feature_dim = shape("proj_in.weight")[1]
        for key in ("layers.0.0.to_q.weight", "layers.0.1.1.weight", "proj_out.weight", "norm_out.weight"):
            shape(key)
        if shape("proj_out.weight")[0] != context_dim:
            raise SubjectError(f"adapter '{name}': image_proj.proj_out gives {shape('proj_out.weight')[0]} "
                               f"channels but the layers read {context_dim}")
        return IPAdapterSpec("plus", context_dim, tokens, FEATURE_PENULTIMATE, feature_dim, hidden)
    if "proj.3.weight" in image_proj:
        feature_dim = shape("proj.0.weight")[1]
        if shape("proj.2.weight")[0] != context_dim:
            raise SubjectError(f"adapter '{name}': image_proj.proj.2 gives {shape('proj.2.weight')[0]} channels, "
                               f"the layers read {context_dim}")
        return IPAdapterSpec("full", context_dim, 0, FEATURE_PENULTIMATE, feature_dim, hidden)
    out, feature_dim = shape("proj.weight")
    if shape("norm.weight") != (context_dim,) or out % context_dim:
        raise SubjectError(f"adapter '{name}': image_proj.proj [{out}, {feature_dim}] does not make tokens "
                           f"of width {context_dim}")
    return IPAdapterSpec("base", context_dim, out // context_dim, FEATURE_EMBEDS, feature_dim, hidden)


class ImageProjection(nn.Module):
    """base: [B, E] -> Linear -> [B, T, D] -> LayerNorm."""

    def __init__(self, feature_dim, context_dim, tokens, ops=nn):
        super().__init__()
        self.tokens, self.context_dim = tokens, context_dim
        self.proj = ops.Linear(feature_dim, tokens * context_dim)
        self.norm = ops.LayerNorm(context_dim)

    def forward(self, embeds):
        return self.norm(self.proj(embeds).reshape(-1, self.tokens, self.context_dim))


class FullProjection(nn.Module):
    """full: every CLIP-vision token [B, 257, E] -> MLP -> [B, 257, D]."""

    def __init__(self, feature_dim, context_dim, ops=nn):
        super().__init__()
        self.proj = nn.Sequential(ops.Linear(feature_dim, feature_dim), nn.GELU(),
                                  ops.Linear(feature_dim, context_dim), ops.LayerNorm(context_dim))

    def forward(self, hidden):
        return self.proj(hidden)


class _PerceiverAttention(nn.Module):
    def __init__(self, dim, heads, dim_head, ops=nn):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm1, self.norm2 = ops.LayerNorm(dim), ops.LayerNorm(dim)
        self.to_q = ops.Linear(dim, inner, bias=False)
        self.to_kv = ops.Linear(dim, 2 * inner, bias=False)
        self.to_out = ops.Linear(inner, dim, bias=False)

    def forward(self, x, latents):
        """Latents attend to [image tokens, latents] (Flamingo's Perceiver resampler)."""
        x, latents = self.norm1(x), self.norm2(latents)
        b, t, _ = latents.shape
        split = lambda z: z.reshape(b, z.shape[1], self.heads, self.dim_head).transpose(1, 2)  # noqa: E731
        q = split(self.to_q(latents))
        k, v = (split(z) for z in self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1))
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1).to(q.dtype)
        return self.to_out((weight @ v).transpose(1, 2).reshape(b, t, -1))


class Resampler(nn.Module):
    """plus: learned latents [1, T, W] read the CLIP-vision tokens -> [B, T, D]."""

    def __init__(self, image_proj: dict, ops=nn):
        super().__init__()
        _, tokens, dim = image_proj["latents"].shape
        feature_dim = image_proj["proj_in.weight"].shape[1]
        context_dim = image_proj["proj_out.weight"].shape[0]
        depth = 1 + max(int(k.split(".")[1]) for k in image_proj if k.startswith("layers."))
        inner = image_proj["layers.0.0.to_q.weight"].shape[0]
        ff = image_proj["layers.0.1.1.weight"].shape[0]
        dim_head = 64
        self.latents = nn.Parameter(torch.zeros(1, tokens, dim))
        self.proj_in = ops.Linear(feature_dim, dim)
        self.proj_out = ops.Linear(dim, context_dim)
        self.norm_out = ops.LayerNorm(context_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([_PerceiverAttention(dim, inner // dim_head, dim_head, ops),
                           nn.Sequential(ops.LayerNorm(dim), ops.Linear(dim, ff, bias=False), nn.GELU(),
                                         ops.Linear(ff, dim, bias=False))])
            for _ in range(depth))

    def forward(self, hidden):
        latents = self.latents.to(hidden).expand(hidden.shape[0], -1, -1)
        x = self.proj_in(hidden)
        for attention, feed_forward in self.layers:
            latents = attention(x, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))


class _LayerKV(nn.Module):
    def __init__(self, context_dim, hidden, ops=nn):
        super().__init__()
        self.to_k_ip = ops.Linear(context_dim, hidden, bias=False)
        self.to_v_ip = ops.Linear(context_dim, hidden, bias=False)


class IPAdapter(nn.Module):
    """The whole file as a module: ``image_proj`` and ``ip_adapter.{2n+1}.to_{k,v}_ip``."""

    def __init__(self, spec: IPAdapterSpec, image_proj: dict, ops=nn):
        """``ops``: the layer classes (torch.nn, or ComfyUI's comfy.ops.manual_cast, whose layers
        cast their weights to the input's device and dtype, so a partly loaded adapter still runs)."""
        super().__init__()
        self.spec = spec
        if spec.variant == "plus":
            self.image_proj = Resampler(image_proj, ops)
        elif spec.variant == "full":
            self.image_proj = FullProjection(spec.feature_dim, spec.context_dim, ops)
        else:
            self.image_proj = ImageProjection(spec.feature_dim, spec.context_dim, spec.tokens, ops)
        self.ip_adapter = nn.ModuleDict({str(n): _LayerKV(spec.context_dim, spec.hidden[n], ops) for n in sorted(spec.hidden)})

    @classmethod
    def from_state_dict(cls, sd: dict, name: str, ops=nn, dtype=torch.float32) -> "IPAdapter":
        parts = split_state_dict(sd)
        if parts is None:
            raise SubjectError(f"adapter '{name}' has neither 'image_proj.*' nor 'ip_adapter.*' keys")
        image_proj, ip = parts
        spec = detect(image_proj, ip, name)
        module = cls(spec, image_proj, ops)
        flat = {f"image_proj.{k}": v for k, v in image_proj.items()}
        flat.update({f"ip_adapter.{k}": v for k, v in ip.items()})
        own = module.state_dict()
        wrong = [k for k in own if k in flat and tuple(flat[k].shape) != tuple(own[k].shape)]
        missing, extra = [k for k in own if k not in flat], [k for k in flat if k not in own]
        if missing or extra or wrong:
            what = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                    else f"{wrong[0]} has shape {list(flat[wrong[0]].shape)}, expected {list(own[wrong[0]].shape)}")
            raise SubjectError(f"adapter '{name}' ({spec.describe()}) does not have the layout of its kind: {what}")
        module.load_state_dict({k: v.to(dtype) for k, v in flat.items()}, assign=True)
        return module.eval().requires_grad_(False)

    def tokens(self, feature: torch.Tensor) -> torch.Tensor:
        """Image tokens [B, T, D] from the spec's CLIP-vision feature (computed where ``feature`` is)."""
        return self.image_proj(feature)

    def keys_values(self, tokens: torch.Tensor, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [B, T, hidden_n] of layer ``number`` for image tokens [B, T, D]."""
        layer = self.ip_adapter[str(number)]
        return layer.to_k_ip(tokens), layer.to_v_ip(tokens)
