"""The pack's own Subject-Diffusion-style adapter, format "subjref.v1" (docs/subject-adapter-format.md).

Parts (Subject-Diffusion, Ma et al. 2023, Sec. 3.2-3.3; GLIGEN, Li et al. 2023, Eq. 5-8):
    grounding  GroundingNet: per patch token p [E_v] of the segmented subject and its box b,
               tokens = fc2(GELU(fc1(LayerNorm([p, Fourier(b)]))))            [n_patch, token_dim]
    fusers     GatedSelfAttention in every transformer block, between attn1 and attn2 (subject_attention.py)
    mask_in    Conv2d(1, model_channels, 3) on the location mask (1 inside the subjects' boxes), added
               to conv_in's output: by linearity, a zero-initialised fifth conv_in channel
    cls_mlp    per text-encoder tower: the subject's CLIP image embedding -> one token embedding that
               replaces the placeholder word in the prompt

Frozen UNet and text encoder; nothing here touches attn2.to_k / to_v, so Perfusion edits still apply.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import torch
from safetensors import safe_open
from torch import nn

from .atomic_file import save_atomic
from .errors import SubjectError
from .subject_attention import GatedSelfAttention

FORMAT = "subjref.v1"
FOURIER_FREQS = 8
TOWER_WIDTH_KEYS = ("l", "g", "h")
PRESETS = ("full", "lite")
_META_INTS = ("vision_width", "vision_embed_dim", "n_patch", "token_dim", "hidden_dim", "heads", "max_subjects",
              "model_channels")


def fourier_embedding(xyxy: torch.Tensor, freqs: int = FOURIER_FREQS) -> torch.Tensor:
    """GLIGEN's Fourier embedder: [.., 4] -> [.., 4 * 2 * freqs], per frequency 100^(k/freqs): sin, cos."""
    bands = 100 ** (torch.arange(freqs, dtype=torch.float32, device=xyxy.device) / freqs)
    parts = []
    for f in bands:
        parts += [torch.sin(f * xyxy), torch.cos(f * xyxy)]
    return torch.cat(parts, dim=-1)


class _MLP(nn.Module):
    def __init__(self, inputs, hidden, outputs, ops=nn):
        super().__init__()
        self.layernorm = ops.LayerNorm(inputs)
        self.fc1 = ops.Linear(inputs, hidden)
        self.fc2 = ops.Linear(hidden, outputs)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(self.layernorm(x))))


@dataclass(frozen=True)
class AdapterConfig:
    family: str                 # sd1 | sd2 | sdxl
    preset: str                 # full | lite
    vision_width: int           # E_v: CLIP-vision hidden width (1280 for ViT-H)
    vision_embed_dim: int       # CLIP-vision image_embeds width (1024 for ViT-H)
    n_patch: int                # patch tokens per subject (256 for ViT-H/14 at 224 px)
    token_dim: int              # grounding token width
    hidden_dim: int             # GroundingNet / cls_mlp hidden width
    heads: int                  # fuser heads
    max_subjects: int
    model_channels: int         # conv_in output channels of the UNet
    blocks: tuple               # ((transformer block path, width), ...)
    towers: tuple               # ((tower key "l" | "g" | "h", token embedding width), ...)

    def metadata(self) -> dict:
        meta = {"format": FORMAT, "family": self.family, "preset": self.preset, "fourier_freqs": str(FOURIER_FREQS)}
        meta.update({k: str(getattr(self, k)) for k in _META_INTS})
        return meta


class SubjectAdapter(nn.Module):
    def __init__(self, config: AdapterConfig, ops=nn):
        """``ops``: the layer classes (torch.nn for training; ComfyUI's comfy.ops.manual_cast when
        loaded for sampling, so a partly loaded adapter casts its weights to the input's device)."""
        super().__init__()
        self.config = config
        c = config
        self.grounding = nn.Module()
        self.grounding.linears_image = _MLP(c.vision_width + 8 * FOURIER_FREQS, c.hidden_dim, c.token_dim, ops)
        self.cls_mlp = nn.ModuleDict({key: _MLP(c.vision_embed_dim, c.hidden_dim, width, ops) for key, width in c.towers})
        self.fusers = nn.ModuleDict({_name(path): GatedSelfAttention(width, c.token_dim, c.heads, c.preset == "full", ops)
                                     for path, width in c.blocks})
        self.mask_in = ops.Conv2d(1, c.model_channels, 3, padding=1, bias=False)
        self.fuser_by_path = {path: self.fusers[_name(path)] for path, _ in c.blocks}

    def initialise_(self, seed: int = 0) -> "SubjectAdapter":
        """Training start: small random MLPs; gates and the mask channel at 0, so the adapter starts
        as the identity (GLIGEN / Subject-Diffusion initialisation)."""
        g = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            if p.ndim >= 2:
                p.data.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            else:
                p.data.zero_()
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.data.fill_(1.0)
        self.mask_in.weight.data.zero_()
        return self

    def grounding_tokens(self, patches: torch.Tensor, xyxy: torch.Tensor) -> torch.Tensor:
        """patches [B, n_patch, E_v], xyxy [B, 4] fractions -> [B, n_patch, token_dim]."""
        box = fourier_embedding(xyxy.to(patches.device, patches.dtype))[:, None].expand(-1, patches.shape[1], -1)
        return self.grounding.linears_image(torch.cat([patches, box], dim=-1))

    def placeholder_embedding(self, image_embeds: torch.Tensor) -> dict:
        """{tower key: [B, width]}: the subject's word embedding per text-encoder tower."""
        return {key: mlp(image_embeds) for key, mlp in self.cls_mlp.items()}

    def file_tensors(self) -> dict:
        out = {}
        for key, value in self.state_dict().items():
            if key.startswith("fusers."):
                name, rest = key[len("fusers."):].split(".", 1)
                key = f"unet.{_path(name)}.fuser.{rest}"
            elif key.startswith("mask_in."):
                key = "unet." + key
            out[key] = value
        return out


def _name(path: str) -> str:
    return path.replace(".", "-")


def _path(name: str) -> str:
    return name.replace("-", ".")


def _fail(name: str, problem: str) -> SubjectError:
    return SubjectError(f"subject adapter '{name}' {problem}")


def read_header(path: str, name: str) -> tuple[dict, dict]:
    """(metadata, {key: (dtype, shape)}) of a safetensors file, without reading tensors."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 64 * 1024 * 1024 or n > os.path.getsize(path) - 8:
                raise ValueError("header length")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise _fail(name, f"is not a readable safetensors file ({e})") from None
    meta = dict(header.pop("__metadata__", None) or {})
    return meta, {k: (v.get("dtype"), tuple(v.get("shape", ()))) for k, v in header.items()}


def config_from_file(meta: dict, shapes: dict, name: str) -> AdapterConfig:
    if meta.get("format") != FORMAT:
        raise _fail(name, f"has format {meta.get('format')!r}; expected {FORMAT!r}")
    try:
        ints = {k: int(meta[k]) for k in _META_INTS}
    except (KeyError, ValueError) as e:
        raise _fail(name, f"has missing or bad metadata {e}; expected integers {', '.join(_META_INTS)}") from None
    if meta.get("preset") not in PRESETS:
        raise _fail(name, f"has preset {meta.get('preset')!r}; expected one of {PRESETS}")
    if meta.get("family") not in ("sd1", "sd2", "sdxl"):
        raise _fail(name, f"has family {meta.get('family')!r}; expected sd1, sd2 or sdxl")
    try:
        blocks = sorted({(k[len("unet."): k.index(".fuser.")], shapes[k][1][0])
                         for k in shapes if k.startswith("unet.") and k.endswith(".fuser.norm1.weight")})
        towers = tuple((k.split(".")[1], shapes[k][1][0]) for k in sorted(shapes)
                       if k.startswith("cls_mlp.") and k.endswith(".fc2.bias"))
    except IndexError:
        raise _fail(name, "has a norm or bias tensor that is not 1-D") from None
    if not blocks:
        raise _fail(name, "has no 'unet.<block>.fuser.*' tensors")
    return AdapterConfig(family=meta["family"], preset=meta["preset"], blocks=tuple(blocks), towers=towers, **ints)


def read_adapter(path: str, name: str | None = None, ops=nn, dtype=torch.float32) -> SubjectAdapter:
    """Read and validate a subjref.v1 file (every key and shape against its own metadata)."""
    name = name or os.path.basename(path)
    meta, shapes = read_header(path, name)
    config = config_from_file(meta, shapes, name)
    adapter = SubjectAdapter(config, ops)
    expected = {k: tuple(v.shape) for k, v in adapter.file_tensors().items()}
    missing = [k for k in expected if k not in shapes]
    extra = [k for k in shapes if k not in expected]
    wrong = [k for k in expected if k in shapes and shapes[k][1] != expected[k]]
    if missing or extra or wrong:
        what = (f"is missing {missing[0]}" if missing else f"has an unexpected tensor {extra[0]}" if extra
                else f"has {wrong[0]} of shape {list(shapes[wrong[0]][1])}, expected {list(expected[wrong[0]])}")
        raise _fail(name, f"{what} (per its own metadata: {config.family}, preset {config.preset})")
    bad_dtype = [k for k, (dt, _) in shapes.items() if dt not in ("F16", "F32", "BF16")]
    if bad_dtype:
        raise _fail(name, f"tensor {bad_dtype[0]} is {shapes[bad_dtype[0]][0]}; expected F16, BF16 or F32")
    tensors = {}
    try:
        with safe_open(path, framework="pt") as f:
            for key in expected:
                tensors[key] = f.get_tensor(key)
    except Exception as e:      # noqa: BLE001 - truncated or damaged data
        raise _fail(name, f"is damaged ({type(e).__name__}: {e})") from None
    for key, t in tensors.items():
        if not torch.isfinite(t).all():
            raise _fail(name, f"tensor {key} contains NaN or Inf values")
        tensors[key] = t.to(dtype)
    state = {}
    for key, value in tensors.items():
        if key.startswith("unet.mask_in."):
            state[key[len("unet."):]] = value
        elif key.startswith("unet."):
            path_, rest = key[len("unet."):].split(".fuser.", 1)
            state[f"fusers.{_name(path_)}.{rest}"] = value
        else:
            state[key] = value
    adapter.load_state_dict(state, assign=True)
    return adapter.eval().requires_grad_(False)


def write_adapter(path: str, adapter: SubjectAdapter, dtype=torch.float16, extra_metadata: dict | None = None) -> str:
    """Atomic write (never overwrites); refuses values that overflow ``dtype``."""
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in adapter.file_tensors().items()}
    bad = [k for k, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        raise SubjectError(f"subject adapter: {bad[0]} has values too large for {str(dtype).replace('torch.', '')}; "
                           "nothing was written")
    meta = adapter.config.metadata()
    meta.update({f"info.{k}": str(v) for k, v in (extra_metadata or {}).items()})
    return save_atomic(tensors, path, meta, what="subject adapter file")
