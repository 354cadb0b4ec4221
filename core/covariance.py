"""The text-encoder covariance C and its inverse G (spec section 5).

C estimates the uncentered second moment E[e e^T] of the token encodings e [D] that the UNet's
cross-attention sees; it defines the gate's metric s(e) = i^T G e / i^T G i with G = C^-1. It is a
property of the text encoder (and its layer setting), not of a concept: computed once, cached, and
recorded in each concept by its key (perfusion.covariance_sha256).

The plain sample moment S = (1/N) sum_n e_n e_n^T is near-singular in every direction the corpus
never excites (a random full-size CLIP-L gives cond(S) ~ 1e11 on a broad corpus), and G = S^-1 would
inflate exactly those directions. So C is the Ledoit-Wolf estimate (Ledoit & Wolf 2004, "A
well-conditioned estimator for large-dimensional covariance matrices"), shrunk toward mu I with
mu = tr(S) / D:

    C = rho mu I + (1 - rho) S,       rho = min(b2, d2) / d2   in [0, 1]
    d2 = ||S - mu I||_F^2,            b2 = (1/K^2) sum_k ||Z_k - S||_F^2

The intensity rho comes from the samples. The sampling unit k is a caption, not a token: the tokens
of one caption are strongly dependent (a causal encoder, a BOS encoding that is the same for every
caption), so treating them as independent would understate the estimation noise b2. With X_k [n_k, D]
a caption's encodings, N the token count and K the caption count, Z_k = (K/N) X_k^T X_k has mean S, and
||Z_k||_F^2 = (K/N)^2 ||X_k X_k^T||_F^2 needs only the caption's small Gram matrix, so one pass suffices.

C is positive definite for any finite encoder once rho > 0 (its smallest eigenvalue is >= rho mu).
A floor on rho caps the condition number at MAX_CONDITION for degenerate corpora (for example a
single repeated caption, where b2 = 0); on real corpora the estimated rho is far above it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import ConceptError

# Condition number that the shrinkage floor guarantees (float32 G keeps ~1e-7 * cond relative error).
MAX_CONDITION = 1e6


@dataclass(frozen=True)
class CovarianceEstimate:
    covariance: torch.Tensor     # [D, D] float64, the shrunk C that G inverts
    sample: torch.Tensor         # [D, D] float64, the plain sample moment S
    intensity: float             # rho actually used, in [0, 1]
    ledoit_wolf: float           # rho estimated from the samples (before the MAX_CONDITION floor)
    condition: float             # cond(C)
    sample_condition: float      # cond(S) (inf when S is singular)
    tokens: int
    captions: int

    def info(self) -> dict:
        """Metadata for the cache file and for concepts."""
        return {"perfusion.covariance_shrinkage": f"{self.intensity:.6g}",
                "perfusion.covariance_condition": f"{self.condition:.6g}",
                "perfusion.covariance_tokens": str(self.tokens),
                "perfusion.covariance_captions": str(self.captions)}


class CovarianceAccumulator:
    """Running sums over captions in float64: sum X^T X, token and caption counts, sum ||X X^T||_F^2."""

    def __init__(self, dim: int):
        self.dim = dim
        self.sum = torch.zeros(dim, dim, dtype=torch.float64)
        self.gram_energy = 0.0
        self.tokens = 0
        self.captions = 0

    def add(self, encodings: torch.Tensor) -> None:
        """encodings: [n, D], the encodings of ONE caption (the positions that count)."""
        e = encodings.detach().to(device="cpu", dtype=torch.float64)
        if e.ndim != 2 or e.shape[1] != self.dim or e.shape[0] == 0:
            raise ValueError(f"expected one caption's encodings [n, {self.dim}], got {tuple(e.shape)}")
        self.sum += e.T @ e
        self.gram_energy += float((e @ e.T).square().sum())
        self.tokens += e.shape[0]
        self.captions += 1

    def estimate(self) -> CovarianceEstimate:
        if self.tokens == 0:
            raise ConceptError("no token encodings were accumulated for the covariance")
        S = self.sum / self.tokens
        S = 0.5 * (S + S.T)
        D, K, N = self.dim, self.captions, self.tokens
        mu = float(torch.trace(S)) / D
        if not mu > 0:
            raise ConceptError("the text encoder's encodings are all zero; no covariance can be estimated")
        s_energy = float(S.square().sum())
        d2 = max(s_energy - D * mu * mu, 0.0)
        b2_bar = max(((K / N) ** 2 * self.gram_energy - K * s_energy) / K ** 2, 0.0)
        rho_lw = 1.0 if d2 == 0 else min(b2_bar, d2) / d2
        eig = torch.linalg.eigvalsh(S)
        lo, hi = max(float(eig[0]), 0.0), float(eig[-1])
        rho = max(rho_lw, _rho_for_condition(lo, hi, mu, MAX_CONDITION))
        C = rho * mu * torch.eye(D, dtype=torch.float64) + (1 - rho) * S
        c_lo, c_hi = rho * mu + (1 - rho) * lo, rho * mu + (1 - rho) * hi
        return CovarianceEstimate(C, S, rho, rho_lw, c_hi / c_lo, hi / lo if lo > 0 else float("inf"), N, K)


def _rho_for_condition(lo: float, hi: float, mu: float, limit: float) -> float:
    """Smallest rho with cond(rho mu I + (1 - rho) S) <= limit, for S's extreme eigenvalues lo <= hi."""
    if hi <= limit * lo:
        return 0.0
    return (hi - limit * lo) / (hi - limit * lo + (limit - 1) * mu)


def condition_number(covariance: torch.Tensor) -> float:
    eig = torch.linalg.eigvalsh(0.5 * (covariance + covariance.T).to(torch.float64))
    return float("inf") if eig[0] <= 0 else float(eig[-1] / eig[0])


def invert(covariance: torch.Tensor, name: str = "the covariance") -> torch.Tensor:
    """G = C^-1 in float64. C from ``CovarianceAccumulator.estimate`` is positive definite by
    construction; only a non-finite or non-positive-definite matrix (a damaged file) is refused."""
    c = covariance.to(torch.float64)
    if not torch.isfinite(c).all():
        raise ConceptError(f"{name} contains NaN or Inf values")
    c = 0.5 * (c + c.T)
    factor, info = torch.linalg.cholesky_ex(c)
    if info.item() != 0:
        raise ConceptError(f"{name} is not positive definite; delete the cached file so that it is estimated again")
    g = torch.cholesky_inverse(factor)
    return 0.5 * (g + g.T)


def tensors_sha256(named_tensors, extra: str = "") -> str:
    """SHA-256 over (name, dtype, shape, bytes) of tensors, in name order, plus ``extra``."""
    h = hashlib.sha256()
    for name, t in sorted(named_tensors, key=lambda kv: kv[0]):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())      # the buffer itself, no copy
    h.update(extra.encode())
    return h.hexdigest()


def save_covariance(path: str, tensors: dict, key: str, info: dict) -> None:
    """Atomic write of ``tensors`` (float64 ``covariance`` plus e.g. the encoder fingerprint); an
    existing cache file is replaced (it holds the same numbers)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".covariance-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        meta = {"perfusion.covariance_sha256": key, **{str(k): str(v) for k, v in info.items()}}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_covariance(path: str):
    """(metadata, {name: tensor}) of a cache file, or None if it is missing or damaged."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:
        return None
    c = tensors.get("covariance")
    if c is None or c.ndim != 2 or c.shape[0] != c.shape[1] or not torch.isfinite(c).all():
        return None
    return meta, tensors
