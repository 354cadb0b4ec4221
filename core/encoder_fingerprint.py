"""What identifies a text encoder for the covariance: a fingerprint of its encodings.

C depends on the context encodings and on nothing else, so the cache key is made from them: the
encodings of a fixed set of probe prompts at the layer in use, read at a few positions (BOS, the
first word, the first EOS, the last padding position) and projected onto fixed random directions.

Why encodings, not a hash of the weights: the weights a checkpoint lacks (SD1.5 has no
``text_projection``; ComfyUI leaves it uninitialised), weights that never reach the cond (the layers
after CLIPSetLastLayer's, the pooled projection), the storage dtype and the device change a weight
hash but not one encoding; a LoRA on the CLIP or another layer setting changes the encodings and so
the fingerprint. Encodings are compared with a tolerance because another device, dtype or thread
count computes them with other rounding.

    fingerprint: [PROBES * POSITIONS * DIRECTIONS] float32  (8 * 4 * 8 = 256 values, 1 KB)
"""

from __future__ import annotations

import base64

import torch

PROBES = (
    "a photo of a dog",
    "masterpiece, best quality, a portrait of a woman with red hair, soft light, 85mm",
    "an oil painting of a lighthouse on a cliff at sunset",
    "lowres, bad anatomy, blurry, watermark, jpeg artifacts",
    "a cat",
    "(cyberpunk city:1.2) at night, neon signs, rain, cinematic",
    "a red apple on a wooden table next to a glass of water",
    "3d render of a cute robot, studio lighting, octane render, highly detailed",
)
DIRECTIONS = 8
PROJECTION_SEED = 20231031
# Relative distance below which two fingerprints are the same encoder. Measured (tests and README):
# the same weights computed in fp32 vs bf16 differ by under 1e-2; distinct encoders differ by 0.3
# or more, and a LoRA at strength 0.1 on the CLIP by several times this tolerance.
TOLERANCE = 0.02


def projection(dim: int) -> torch.Tensor:
    """The fixed random directions [dim, DIRECTIONS], unit columns, the same on every machine."""
    g = torch.Generator().manual_seed(PROJECTION_SEED + dim)
    r = torch.randn(dim, DIRECTIONS, generator=g, dtype=torch.float64)
    return r / r.norm(dim=0, keepdim=True)


def fingerprint(encodings: torch.Tensor, eos_positions) -> torch.Tensor:
    """encodings [PROBES, T, D] (one chunk per probe), eos_positions: each probe's first EOS index."""
    e = encodings.detach().to(device="cpu", dtype=torch.float64)
    picks = []
    for k, eos in enumerate(eos_positions):
        picks.append(e[k, [0, 1, int(eos), e.shape[1] - 1]])
    stacked = torch.stack(picks)                                  # [P, 4, D]
    return (stacked @ projection(e.shape[-1])).reshape(-1).float()


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative distance ||a - b|| / max(||a||, ||b||); inf when the shapes differ."""
    if a.shape != b.shape:
        return float("inf")
    a, b = a.double(), b.double()
    scale = max(float(a.norm()), float(b.norm()), 1e-30)
    return float((a - b).norm()) / scale


def same_encoder(a: torch.Tensor, b: torch.Tensor) -> bool:
    return distance(a, b) <= TOLERANCE


def to_text(fp: torch.Tensor) -> str:
    """Base64 of the float32 values (for safetensors metadata, which is strings only)."""
    return base64.b64encode(fp.detach().cpu().float().contiguous().numpy().tobytes()).decode("ascii")


def from_text(text: str) -> torch.Tensor | None:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeError):
        return None
    if not raw or len(raw) % 4:
        return None
    fp = torch.frombuffer(bytearray(raw), dtype=torch.float32).clone()
    return fp if torch.isfinite(fp).all() else None


def shared_encoder_check(a, b):
    """Whether concepts ``a`` and ``b`` (core.concept_file.Concept) were trained with one covariance
    and so can share one projection: (error message or None, warning message or None)."""
    from .clip_layer import concept_layer, describe
    if not a.covariance_sha256 or not b.covariance_sha256 or a.covariance_sha256 == b.covariance_sha256:
        return None, None
    pair = f"'{a.name or a.trigger}' and '{b.name or b.trigger}'"
    la, lb = concept_layer(a), concept_layer(b)
    if la != lb:
        return (f"concepts {pair} were trained at different text-encoder layers ({describe(la)} and "
                f"{describe(lb)}); retrain one at the other's layer"), None
    fa = from_text(a.info.get("perfusion.encoder_fingerprint", ""))
    fb = from_text(b.info.get("perfusion.encoder_fingerprint", ""))
    if fa is None or fb is None:
        old = " and ".join(f"'{c.name or c.trigger}'" for c, f in ((a, fa), (b, fb)) if f is None)
        return None, (f"{old} predates text-encoder fingerprints, so it cannot be checked that {pair} share a text "
                      f"encoder; model family and layer ({describe(la)}) match, so they are combined. If the "
                      "result looks wrong, train both again on this checkpoint")
    d = distance(fa, fb)
    if d > TOLERANCE:
        return (f"concepts {pair} were trained on different text encoders: their encodings of the probe prompts "
                f"differ by {d:.1%} (one encoder differs by at most {TOLERANCE:.0%} across devices and dtypes), "
                "so they cannot share one projection; train both on the same checkpoint (and the same LoRAs on its "
                "CLIP)"), None
    for key, what in (("perfusion.corpus_sha256", "caption corpora (PERFUSION_CAPTIONS)"),
                      ("perfusion.covariance_positions", "covariance positions")):
        va, vb = a.info.get(key), b.info.get(key)
        if va and vb and va != vb:
            return (f"concepts {pair} share a text encoder but were trained with different {what}, so their "
                    "covariances differ; train both with the same setting"), None
    return None, None
