"""The text-encoder covariance C and its inverse G (spec section 5).

C = (1/N) sum_n e_n e_n^T over the non-padding token encodings e_n [D] of a caption corpus: the
uncentered second moment that defines the gate's metric s(e) = i^T G e / i^T G i with G = C^-1.
It is a property of the text encoder (and its layer setting), not of a concept: computed once,
cached, and recorded in each concept by its hash (perfusion.covariance_sha256).
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import ConceptError

# Largest condition number of C we invert: beyond it G amplifies rounding noise into the gate.
MAX_CONDITION = 1e9


class CovarianceAccumulator:
    """Running sum of e e^T in float64 (exact enough for 10^7 tokens)."""

    def __init__(self, dim: int):
        self.sum = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = 0

    def add(self, encodings: torch.Tensor) -> None:
        """encodings: [n, D], the non-padding tokens only."""
        e = encodings.detach().to(device="cpu", dtype=torch.float64)
        self.sum += e.T @ e
        self.count += e.shape[0]

    def covariance(self) -> torch.Tensor:
        if self.count == 0:
            raise ConceptError("no token encodings were accumulated for the covariance")
        return self.sum / self.count


def invert(covariance: torch.Tensor, name: str = "the covariance") -> torch.Tensor:
    """G = C^-1 in float64, refusing a singular or ill-conditioned C with a clear message."""
    c = covariance.to(torch.float64)
    c = 0.5 * (c + c.T)
    eigenvalues = torch.linalg.eigvalsh(c)
    smallest, largest = eigenvalues[0].item(), eigenvalues[-1].item()
    if not smallest > 0 or not largest / smallest < MAX_CONDITION:
        condition = float("inf") if smallest <= 0 else largest / smallest
        raise ConceptError(f"{name} is singular or nearly so (condition number {condition:.3g}, limit "
                           f"{MAX_CONDITION:.0e}): the caption corpus does not cover the text encoder's space; "
                           "use more, more varied captions")
    g = torch.cholesky_inverse(torch.linalg.cholesky(c))
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


def save_covariance(path: str, covariance: torch.Tensor, key: str, info: dict) -> None:
    """Atomic write; an existing cache file is replaced (it holds the same numbers)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".covariance-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        meta = {"perfusion.covariance_sha256": key, **{str(k): str(v) for k, v in info.items()}}
        save_file({"covariance": covariance.to(torch.float64).contiguous()}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_covariance(path: str, key: str) -> torch.Tensor | None:
    """The cached C, or None if the file is missing, damaged or for another key."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            if (f.metadata() or {}).get("perfusion.covariance_sha256") != key:
                return None
            c = f.get_tensor("covariance")
    except Exception:
        return None
    if c.ndim != 2 or c.shape[0] != c.shape[1] or not torch.isfinite(c).all():
        return None
    return c.to(torch.float64)
