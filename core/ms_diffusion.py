"""MS-Diffusion (Wang et al., "MS-Diffusion: Multi-subject Zero-shot Image Personalization with Layout
Guidance", ICLR 2025): file layout, grounding resampler and box-masked image attention, as math on
plain tensors (no ComfyUI import).

A file (``ms_adapter.bin``, a torch pickle, or a safetensors conversion with flat keys) holds:
    image_proj.*          the grounding resampler (a Perceiver, as IP-Adapter-Plus's, with grounding queries)
    ms_adapter.{2n+1}.to_k_ip.weight / .to_v_ip.weight    [hidden_n, context] per cross-attention layer n,
                          numbered as IP-Adapter SDXL numbers them (core/subject_layers.py)
    dummy_image_tokens    [1, 4, context]

Per subject (computed once, at encode time):
    queries  = LayerNorm(MLP([phrase_embed, Fourier(box)]).view(16, dim))       phrase: CLIP-L pooled, unprojected
    x        = proj_in(CLIP-vision penultimate hidden states)                  [257, dim]
    queries  = 4 x (queries + PerceiverAttention(x, queries); queries + FF(queries))
    tokens   = norm_out(proj_out(attention_norm(queries)))                     [16, context]

Per cross-attention layer, with T = [4 dummy | 16 tokens of subject 1 | ... ] and a layer grid H x W:
    bias[l, t] = 0 where column t is open to query l, else -10000: subject j's columns are open inside box
                 j's cells (floor(x0*W) <= col < ceil(x1*W), the same for rows with H), the dummy columns
                 only on background rows (inside no box)
    ip         = softmax(q K_ip^T / sqrt(d) + bias) (.) w_cols  @ V_ip,  background rows set to 0
    out        = text_out + ip          (w_cols: scale x the subject's weight on its 16 columns)
One joint softmax: where boxes overlap, a query attends to the union of the covering subjects' tokens.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SubjectError
from .ip_adapter import _LayerKV, _PerceiverAttention
from .subjref_adapter import fourier_embedding

NUM_DUMMY_TOKENS = 4
FOURIER_FREQS = 8
FOURIER_DIM = 4 * 2 * FOURIER_FREQS            # xyxy x (sin, cos) x 8 frequencies = 64
DIM_HEAD = 64                                  # the official Resampler(dim_head=64)
TRAINED_MAX_SUBJECTS = 4                       # max_rn of the official training data generator
DEFAULT_SCALE = 0.6                            # the official README's default
MASK_BIAS = -10000.0                           # as the official processor (finite: no NaN on closed rows)
FAMILY_BY_CONTEXT = {2048: "sdxl", 768: "sd1", 1024: "sd2"}
_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")
_PROJ_KEYS = ("grounding_latents", "latent_proj.0.weight", "latent_proj.0.bias", "latent_proj.2.weight",
              "latent_proj.2.bias", "latent_norm.weight", "latent_norm.bias", "proj_in.weight", "proj_in.bias",
              "attention_norm.weight", "attention_norm.bias", "proj_out.weight", "proj_out.bias",
              "norm_out.weight", "norm_out.bias")


def split_state_dict(sd: dict):
    """(image_proj, ms_adapter, dummy_image_tokens) from the official pickle's three entries or from flat
    ``image_proj.`` / ``ms_adapter.`` / ``dummy_image_tokens`` keys; None if ``sd`` is not MS-Diffusion's."""
    if isinstance(sd.get("ms_adapter"), dict):
        image_proj = sd.get("image_proj")
        return (dict(image_proj) if isinstance(image_proj, dict) else {}), dict(sd["ms_adapter"]), \
            sd.get("dummy_image_tokens")
    if not any(k.startswith("ms_adapter.") for k in sd):
        return None
    image_proj = {k[len("image_proj."):]: v for k, v in sd.items() if k.startswith("image_proj.")}
    ms = {k[len("ms_adapter."):]: v for k, v in sd.items() if k.startswith("ms_adapter.")}
    return image_proj, ms, sd.get("dummy_image_tokens")


def flat_state_dict(image_proj: dict, ms: dict, dummy) -> dict:
    """The safetensors conversion's keys (docs/subject-adapter-format.md)."""
    out = {f"image_proj.{k}": v for k, v in image_proj.items()}
    out.update({f"ms_adapter.{k}": v for k, v in ms.items()})
    out["dummy_image_tokens"] = dummy
    return out


@dataclass(frozen=True)
class MSDiffusionSpec:
    dim: int                 # resampler width (1280)
    depth: int               # Perceiver layers (4)
    heads: int               # resampler heads (20, of 64 channels)
    queries: int             # tokens per subject (16)
    feature_dim: int         # CLIP-vision hidden width it reads (1664: ViT-bigG)
    phrase_dim: int          # phrase embedding width (768: CLIP-L)
    grounding_hidden: int    # hidden width of the grounding MLP (1664 = 2 x 832)
    ff_dim: int              # feed-forward width (5120)
    context_dim: int         # text context width of the UNet (2048: SDXL)
    dummy_tokens: int        # 4
    hidden: dict             # {layer number 2n+1: attn2 width}

    @property
    def family(self) -> str:
        return FAMILY_BY_CONTEXT.get(self.context_dim, f"context {self.context_dim}")

    def describe(self) -> str:
        return f"MS-Diffusion ({self.family})"


def layer_pairs(ms: dict, name: str, prefix: str) -> tuple[int, dict]:
    """(context width, {layer number: attn2 width}) from ``{2n+1}.to_k_ip.weight`` / ``.to_v_ip.weight``."""
    numbers = {}
    for key, value in ms.items():
        m = _KEY.match(key)
        if m is None or not isinstance(value, torch.Tensor):
            raise SubjectError(f"adapter '{name}': unexpected entry '{prefix}.{key}'; expected only "
                               f"'{prefix}.<n>.to_k_ip.weight' / '.to_v_ip.weight' tensors")
        if value.ndim != 2:
            raise SubjectError(f"adapter '{name}': '{prefix}.{key}' has shape {list(value.shape)}; expected 2-D")
        numbers.setdefault(int(m.group(1)), {})[m.group(2)] = value
    if not numbers:
        raise SubjectError(f"adapter '{name}' has no '{prefix}.<n>.to_k_ip.weight' tensors; the file is damaged")
    if sorted(numbers) != list(range(1, 2 * len(numbers), 2)):
        raise SubjectError(f"adapter '{name}': layer numbers {sorted(numbers)[:6]}... are not 1, 3, 5, ...; "
                           "the file is damaged")
    incomplete = [n for n, pair in numbers.items() if set(pair) != {"to_k_ip", "to_v_ip"}]
    if incomplete:
        raise SubjectError(f"adapter '{name}': layer {incomplete[0]} needs both to_k_ip and to_v_ip; the file is damaged")
    context = numbers[1]["to_k_ip"].shape[1]
    hidden = {}
    for n, pair in numbers.items():
        if pair["to_k_ip"].shape != pair["to_v_ip"].shape or pair["to_k_ip"].shape[1] != context:
            raise SubjectError(f"adapter '{name}': layer {n} needs to_k_ip and to_v_ip of equal shape [hidden, {context}]")
        hidden[n] = pair["to_k_ip"].shape[0]
    return context, hidden


def detect(image_proj: dict, ms: dict, dummy, name: str) -> MSDiffusionSpec:
    """The layout, from shapes (the official loader builds the modules and loads with strict=True)."""
    if "latents" in image_proj and "grounding_latents" not in image_proj:
        raise SubjectError(f"adapter '{name}' has an IP-Adapter-Plus resampler (image_proj.latents), not "
                           "MS-Diffusion's grounding resampler (image_proj.grounding_latents); the file is not "
                           "a released MS-Diffusion checkpoint")
    missing = [k for k in _PROJ_KEYS if k not in image_proj]
    if missing:
        raise SubjectError(f"adapter '{name}': 'image_proj.{missing[0]}' is missing; the file is not a complete "
                           "MS-Diffusion checkpoint (expected image_proj, ms_adapter and dummy_image_tokens)")
    if not isinstance(dummy, torch.Tensor) or dummy.ndim != 3 or dummy.shape[0] != 1:
        raise SubjectError(f"adapter '{name}': 'dummy_image_tokens' is missing or not a [1, 4, context] tensor")
    context, hidden = layer_pairs(ms, name, "ms_adapter")
    shape = lambda key: tuple(image_proj[key].shape)  # noqa: E731
    grounding = shape("grounding_latents")
    if len(grounding) != 3:
        raise SubjectError(f"adapter '{name}': image_proj.grounding_latents has shape {list(grounding)}; expected [1, 16, dim]")
    _, queries, dim = grounding
    depth = 1 + max((int(k.split(".")[1]) for k in image_proj if k.startswith("layers.")), default=-1)
    if depth < 1:
        raise SubjectError(f"adapter '{name}' has no 'image_proj.layers.*' (the Perceiver layers)")
    for i in range(depth):
        for part in ("0.norm1.weight", "0.norm2.weight", "0.to_q.weight", "0.to_kv.weight", "0.to_out.weight",
                     "1.0.weight", "1.1.weight", "1.3.weight"):
            if f"layers.{i}.{part}" not in image_proj:
                raise SubjectError(f"adapter '{name}': 'image_proj.layers.{i}.{part}' is missing; the file is damaged")
    inner = shape("layers.0.0.to_q.weight")[0]
    grounding_hidden, grounding_in = shape("latent_proj.0.weight")
    feature_dim = shape("proj_in.weight")[1]
    spec = MSDiffusionSpec(dim=dim, depth=depth, heads=max(1, inner // DIM_HEAD), queries=queries,
                           feature_dim=feature_dim, phrase_dim=grounding_in - FOURIER_DIM,
                           grounding_hidden=grounding_hidden, ff_dim=shape("layers.0.1.1.weight")[0],
                           context_dim=context, dummy_tokens=dummy.shape[1], hidden=hidden)
    problems = []
    if inner % DIM_HEAD:
        problems.append(f"image_proj.layers.0.0.to_q has {inner} channels, not a multiple of {DIM_HEAD}")
    if spec.phrase_dim <= 0:
        problems.append(f"image_proj.latent_proj.0 reads {grounding_in} values; expected phrase width + {FOURIER_DIM}")
    if shape("latent_proj.2.weight") != (queries * dim, grounding_hidden):
        problems.append(f"image_proj.latent_proj.2 has shape {list(shape('latent_proj.2.weight'))}, expected "
                        f"[{queries * dim}, {grounding_hidden}]")
    if shape("proj_out.weight") != (context, dim):
        problems.append(f"image_proj.proj_out has shape {list(shape('proj_out.weight'))}; the layers read {context}")
    if dummy.shape[2] != context:
        problems.append(f"dummy_image_tokens has width {dummy.shape[2]}; the layers read {context}")
    if problems:
        raise SubjectError(f"adapter '{name}' ({spec.describe()}) does not have the layout of its kind: {problems[0]}")
    return spec


class GroundingResampler(nn.Module):
    """``image_proj``: Perceiver resampler whose queries come from each subject's phrase and box."""

    def __init__(self, spec: MSDiffusionSpec, ops=nn):
        super().__init__()
        self.spec = spec
        dim = spec.dim
        self.grounding_latents = nn.Parameter(torch.zeros(1, spec.queries, dim))   # unused: no box-less mode here
        self.latent_proj = nn.Sequential(ops.Linear(spec.phrase_dim + FOURIER_DIM, spec.grounding_hidden), nn.GELU(),
                                         ops.Linear(spec.grounding_hidden, spec.queries * dim))
        self.latent_norm = ops.LayerNorm(dim)
        self.proj_in = ops.Linear(spec.feature_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([_PerceiverAttention(dim, spec.heads, DIM_HEAD, ops),
                           nn.Sequential(ops.LayerNorm(dim), ops.Linear(dim, spec.ff_dim, bias=False), nn.GELU(),
                                         ops.Linear(spec.ff_dim, dim, bias=False))])
            for _ in range(spec.depth))
        self.attention_norm = ops.LayerNorm(dim)
        self.proj_out = ops.Linear(dim, spec.context_dim)
        self.norm_out = ops.LayerNorm(spec.context_dim)

    def grounding_queries(self, phrase_embeds: torch.Tensor, xyxy: torch.Tensor) -> torch.Tensor:
        """phrase_embeds [N, phrase_dim], xyxy [N, 4] fractions -> queries [N, 16, dim]."""
        box = fourier_embedding(xyxy.to(phrase_embeds.device, phrase_embeds.dtype), FOURIER_FREQS)
        latents = self.latent_proj(torch.cat([phrase_embeds, box], dim=-1))
        return self.latent_norm(latents.reshape(-1, self.spec.queries, self.spec.dim))

    def forward(self, features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """features [N, L, feature_dim] (CLIP-vision penultimate), queries [N, 16, dim] -> [N, 16, context]."""
        x = self.proj_in(features)
        latents = queries
        for attention, feed_forward in self.layers:
            latents = attention(x, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(self.attention_norm(latents)))


class MSDiffusionAdapter(nn.Module):
    """The whole file as a module; ``state_dict()`` keys are the flat file's keys."""

    def __init__(self, spec: MSDiffusionSpec, ops=nn):
        super().__init__()
        self.spec = spec
        self.image_proj = GroundingResampler(spec, ops)
        self.ms_adapter = nn.ModuleDict({str(n): _LayerKV(spec.context_dim, spec.hidden[n], ops) for n in sorted(spec.hidden)})
        self.dummy_image_tokens = nn.Parameter(torch.zeros(1, spec.dummy_tokens, spec.context_dim))

    @classmethod
    def from_state_dict(cls, sd: dict, name: str, ops=nn, dtype=torch.float32) -> "MSDiffusionAdapter":
        parts = split_state_dict(sd)
        if parts is None:
            raise SubjectError(f"adapter '{name}' has no 'ms_adapter' entries; it is not an MS-Diffusion file")
        image_proj, ms, dummy = parts
        spec = detect(image_proj, ms, dummy, name)
        module = cls(spec, ops)
        flat = flat_state_dict(image_proj, ms, dummy)
        own = module.state_dict()
        missing, extra = [k for k in own if k not in flat], [k for k in flat if k not in own]
        wrong = [k for k in own if k in flat and tuple(flat[k].shape) != tuple(own[k].shape)]
        not_tensor = [k for k, v in flat.items() if not isinstance(v, torch.Tensor)]
        if missing or extra or wrong or not_tensor:
            what = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                    else f"{not_tensor[0]} is not a tensor" if not_tensor
                    else f"{wrong[0]} has shape {list(flat[wrong[0]].shape)}, expected {list(own[wrong[0]].shape)}")
            raise SubjectError(f"adapter '{name}' ({spec.describe()}) does not have the layout of its kind: {what}")
        bad = [k for k, v in flat.items() if not torch.isfinite(v.float()).all()]
        if bad:
            raise SubjectError(f"adapter '{name}': tensor {bad[0]} contains NaN or Inf values")
        module.load_state_dict({k: v.detach().to(dtype) for k, v in flat.items()}, assign=True)
        return module.eval().requires_grad_(False)

    def tokens(self, features: torch.Tensor, phrase_embeds: torch.Tensor, xyxy: torch.Tensor) -> torch.Tensor:
        """Each subject's 16 tokens [N, 16, context] (computed where ``features`` is)."""
        queries = self.image_proj.grounding_queries(phrase_embeds.to(features), xyxy)
        return self.image_proj(features, queries)

    def keys_values(self, tokens: torch.Tensor, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.ms_adapter[str(number)]
        return layer.to_k_ip(tokens), layer.to_v_ip(tokens)


def _edge(value: float, cells: int, rounding) -> int:
    # floor / ceil of value * cells as the official code intends; the product is rounded first, so that
    # 0.3 * 10 counts as 3 (not 3.0000000000000004, whose ceil would add a cell).
    return int(rounding(round(value * cells, 6)))


def box_cells(xyxy, height: int, width: int) -> torch.Tensor:
    """[height * width] bool, row-major: the cells of a layer's grid that box (x0, y0, x1, y1) covers,
    floor(start * N) <= index < ceil(end * N) per axis (the official rule, here on a non-square grid)."""
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    cols = torch.arange(width)
    rows = torch.arange(height)
    in_x = (cols >= _edge(x0, width, math.floor)) & (cols < _edge(x1, width, math.ceil))
    in_y = (rows >= _edge(y0, height, math.floor)) & (rows < _edge(y1, height, math.ceil))
    return (in_y[:, None] & in_x[None, :]).flatten()


def subject_cells(placements, height: int, width: int) -> torch.Tensor:
    """[S, height * width] bool for S subjects: their box's cells, or (with a region mask [H, W]) the cells
    where the mask, area-resized to the grid, is at least 0.5."""
    out = []
    for xyxy, region in placements:
        if region is not None:
            grid = F.interpolate(region.float()[None, None], size=(height, width), mode="area")[0, 0]
            out.append((grid >= 0.5).flatten())
        else:
            out.append(box_cells(xyxy, height, width))
    return torch.stack(out)


def attention_bias(cells: torch.Tensor, tokens_per_subject: int, dummy_tokens: int, dtype=torch.float32) -> torch.Tensor:
    """[L, dummy + S * n] additive bias: 0 where a query may attend, MASK_BIAS elsewhere."""
    background = ~cells.any(dim=0)                                                    # [L]
    open_ = torch.cat([background[:, None].expand(-1, dummy_tokens),
                       cells.t().repeat_interleave(tokens_per_subject, dim=1)], dim=1)
    bias = torch.zeros(open_.shape, dtype=dtype, device=cells.device)
    return bias.masked_fill(~open_, MASK_BIAS)


def column_weights(weights, tokens_per_subject: int, dummy_tokens: int) -> torch.Tensor:
    """[dummy + S * n]: 1 on the dummy columns, each subject's weight on its columns."""
    weights = torch.as_tensor(weights, dtype=torch.float32)
    return torch.cat([torch.ones(dummy_tokens), weights.repeat_interleave(tokens_per_subject)])


def joint_masked_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                           inside: torch.Tensor, heads: int, precision: torch.dtype | None = None,
                           rows: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, L, h*d]; keys [T, h*d]; values [T, h*d] with the column weights already applied to their rows
    (probs (.) w_cols @ V == probs @ (w_cols (.) V)); bias [L, T]; inside [L] (1 inside some box, 0 on
    background) -> [B, L, h*d]: one softmax over all T columns per query, background rows 0.

    ``rows``: the index of the rows inside some box (``inside.nonzero()``, cached by the caller, or a
    superset of it); only those are computed, the others are 0 anyway, so the cost follows the boxes'
    area. A computed row outside every box (inside 0) is 0 too."""
    dtype = q.dtype
    work = precision if precision is not None and precision != dtype else dtype
    b, length, channels = q.shape
    d = channels // heads
    if rows is not None:
        if rows.numel() == 0:
            return torch.zeros_like(q)
        if rows.numel() == length:
            rows = None
    selected = q if rows is None else q[:, rows]
    n = selected.shape[1]
    qh = selected.to(work).reshape(b, n, heads, d).transpose(1, 2)
    kh = keys.to(work).reshape(1, -1, heads, d).transpose(1, 2)
    vh = values.to(work).reshape(1, -1, heads, d).transpose(1, 2)
    mask = (bias if rows is None else bias[rows]).to(work)[None, None]
    out = F.scaled_dot_product_attention(qh, kh.expand(b, -1, -1, -1), vh.expand(b, -1, -1, -1), attn_mask=mask)
    out = out.transpose(1, 2).reshape(b, n, channels)
    if rows is None:
        return (out * inside.to(work)[None, :, None]).to(dtype)
    out = out * inside.to(work)[rows][None, :, None]              # 1 on rows inside a box: unchanged
    return torch.zeros(b, length, channels, dtype=dtype, device=q.device).index_copy(1, rows, out.to(dtype))
