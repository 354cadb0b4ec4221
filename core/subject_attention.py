"""The two ways a subject enters the UNet, as math on plain tensors.

1. Regional decoupled cross-attention (IP-Adapter Eq. 5 with Subject-Diffusion's location control):
   every subject s has its own softmax over its own image tokens, and its result only lands in its
   region R_s (overlaps scaled to sum to at most 1, subject_regions.py):

       out = sum_s  w_s * R_s  (.)  softmax(Q K_s^T / sqrt(d)) V_s            Q [B, L, h*d]

   A query outside every region gets exactly 0 and no NaN can arise (no row is fully masked).

2. Gated self-attention (GLIGEN Eq. 8, Subject-Diffusion's adapter between self- and cross-attention):

       x <- x + tanh(alpha_attn) * R (.) TS(SelfAttn(norm1([x, linear(objs)])))     (first N tokens)
       x <- x + tanh(alpha_dense) * R (.) FF(norm2(x))                              (preset "full")

   with R the union of the subjects' regions, and a visibility mask so that a visual token in
   subject s's region sees the visual tokens and only s's grounding tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def regional_image_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, regions: torch.Tensor,
                             heads: int, precision: torch.dtype | None = None) -> torch.Tensor:
    """q [B, L, h*d]; keys, values [B, S, T, h*d]; regions [B, L, S] (weight x region) -> [B, L, h*d].

    One batched product over all subjects; the softmax is taken per subject (over its T tokens).
    q is scaled before the product (fp16 scores stay in range); ``precision`` (e.g. float32, as
    ComfyUI's attn_precision) computes the scores in that dtype."""
    dtype = q.dtype
    if precision is not None and precision != dtype:
        q, keys = q.to(precision), keys.to(precision)
    b, length, channels = q.shape
    subjects, tokens = keys.shape[1:3]
    d = channels // heads
    qh = q.reshape(b, length, heads, d).transpose(1, 2) * (1 / math.sqrt(d))                   # [B, h, L, d]
    kh = keys.reshape(b, subjects * tokens, heads, d).permute(0, 2, 3, 1)                      # [B, h, d, S*T]
    vh = values.reshape(b, subjects * tokens, heads, d).transpose(1, 2)                        # [B, h, S*T, d]
    scores = (qh @ kh).reshape(b, heads, length, subjects, tokens)
    probs = scores.float().softmax(dim=-1).to(dtype)
    probs = probs * regions.to(dtype)[:, None, :, :, None]                                      # R_s per query row
    out = probs.reshape(b, heads, length, subjects * tokens) @ vh                             # [B, h, L, d]
    return out.transpose(1, 2).reshape(b, length, channels)


def reference_regional_attention(q, keys, values, regions, heads):
    """The same term, one subject and one head at a time (for tests)."""
    b, length, channels = q.shape
    d = channels // heads
    out = torch.zeros_like(q, dtype=torch.float64)
    for s in range(keys.shape[1]):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            weights = torch.softmax(q[..., sl].double() @ keys[:, s, :, sl].double().transpose(1, 2) / math.sqrt(d), -1)
            out[..., sl] += regions[:, :, s:s + 1].double() * (weights @ values[:, s, :, sl].double())
    return out


class _GEGLUFeedForward(nn.Module):
    """GLIGEN's FeedForward(q, glu=True): net.0.proj [8q, q] (GEGLU), net.2 [q, 4q]."""

    def __init__(self, dim, ops=nn):
        super().__init__()
        self.net = nn.ModuleList([nn.Module(), nn.Identity(), ops.Linear(4 * dim, dim)])
        self.net[0].proj = ops.Linear(dim, 8 * dim)

    def forward(self, x):
        value, gate = self.net[0].proj(x).chunk(2, dim=-1)
        return self.net[2](value * F.gelu(gate))


class _Attention(nn.Module):
    def __init__(self, dim, ops=nn):
        super().__init__()
        self.to_q = ops.Linear(dim, dim, bias=False)
        self.to_k = ops.Linear(dim, dim, bias=False)
        self.to_v = ops.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([ops.Linear(dim, dim)])


class GatedSelfAttention(nn.Module):
    """GLIGEN's GatedSelfAttentionDense with the same parameter names (``linear``, ``attn.to_q``, ...,
    ``ff.net.0.proj``, ``norm1``, ``alpha_attn``...). ``feed_forward=False`` is the "lite" preset."""

    def __init__(self, dim: int, token_dim: int, heads: int, feed_forward: bool = True, ops=nn):
        super().__init__()
        self.heads = heads
        self.linear = ops.Linear(token_dim, dim)
        self.attn = _Attention(dim, ops)
        self.norm1 = ops.LayerNorm(dim)
        self.alpha_attn = nn.Parameter(torch.zeros(()))
        if feed_forward:
            self.ff = _GEGLUFeedForward(dim, ops)
            self.norm2 = ops.LayerNorm(dim)
            self.alpha_dense = nn.Parameter(torch.zeros(()))

    @property
    def feed_forward(self) -> bool:
        return hasattr(self, "ff")

    def forward(self, x: torch.Tensor, objs: torch.Tensor, visible: torch.Tensor | None = None,
                region: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, dim]; objs [B, M, token_dim]; visible [B or 1, N, M] bool (query sees that
        grounding token) or None (all); region [B or 1, N, 1] or None -> x updated [B, N, dim].

        Only visual query rows are computed (GLIGEN drops the grounding rows' outputs anyway), and with
        one region for the whole batch only the rows inside it (the update is 0 outside): the cost
        scales with the subjects' area. ``rows``: those rows' index, if the caller has it cached
        (else it is found here, which costs a device sync)."""
        b, n, dim = x.shape
        if rows is None and region is not None and region.shape[0] == 1:
            rows = torch.nonzero(region[0, :, 0]).flatten()
        if rows is not None:
            if rows.numel() == 0:
                return x
            if rows.numel() == n:
                rows = None
        h = self.norm1(torch.cat([x, self.linear(objs)], dim=1))
        d = dim // self.heads
        split = lambda z: z.reshape(b, z.shape[1], self.heads, d).transpose(1, 2)  # noqa: E731
        queries = h[:, :n] if rows is None else h[:, rows]
        q, k, v = split(self.attn.to_q(queries)), split(self.attn.to_k(h)), split(self.attn.to_v(h))
        mask = None
        if visible is not None:
            visible = visible.to(x.device) if rows is None else visible.to(x.device)[:, rows]
            sees_visual = torch.ones(visible.shape[0], visible.shape[1], n, dtype=torch.bool, device=x.device)
            mask = torch.cat([sees_visual, visible], dim=2)[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.attn.to_out[0](out.transpose(1, 2).reshape(b, queries.shape[1], dim))
        gate = torch.tanh(self.alpha_attn).to(x.dtype)
        if rows is None:
            x = x + gate * (out if region is None else out * region)
        else:
            x = x.index_add(1, rows, gate * out * region[:, rows])
        if self.feed_forward:
            xs = x if rows is None else x[:, rows]
            ff = self.ff(self.norm2(xs))
            update = torch.tanh(self.alpha_dense).to(x.dtype) * (ff if region is None else ff * (region if rows is None else region[:, rows]))
            x = x + update if rows is None else x.index_add(1, rows, update)
        return x
