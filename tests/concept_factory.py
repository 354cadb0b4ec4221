"""Random concepts and reference layer tables for tests and benchmarks (no ComfyUI needed)."""

from __future__ import annotations

import torch

# (attn2 path inside diffusion_model, output width) of the real checkpoints.
SD15_LAYERS = (
    [(f"input_blocks.{b}.1.transformer_blocks.0.attn2", w) for b, w in ((1, 320), (2, 320), (4, 640), (5, 640), (7, 1280), (8, 1280))]
    + [("middle_block.1.transformer_blocks.0.attn2", 1280)]
    + [(f"output_blocks.{b}.1.transformer_blocks.0.attn2", w) for b, w in
       ((3, 1280), (4, 1280), (5, 1280), (6, 640), (7, 640), (8, 640), (9, 320), (10, 320), (11, 320))])
SDXL_LAYERS = (
    [(f"input_blocks.{b}.1.transformer_blocks.{j}.attn2", 640) for b in (4, 5) for j in range(2)]
    + [(f"input_blocks.{b}.1.transformer_blocks.{j}.attn2", 1280) for b in (7, 8) for j in range(10)]
    + [(f"middle_block.1.transformer_blocks.{j}.attn2", 1280) for j in range(10)]
    + [(f"output_blocks.{b}.1.transformer_blocks.{j}.attn2", 1280) for b in (0, 1, 2) for j in range(10)]
    + [(f"output_blocks.{b}.1.transformer_blocks.{j}.attn2", 640) for b in (3, 4, 5) for j in range(2)])
FAMILY_TOWER_WIDTHS = {"sd1": {"clip_l": 768}, "sd2": {"clip_h": 1024}, "sdxl": {"clip_l": 768, "clip_g": 1280}}


def random_covariance(dim, seed=0, dtype=torch.float64):
    """An uncentered second moment of random 'encodings': symmetric positive definite."""
    g = torch.Generator().manual_seed(seed)
    samples = torch.randn(4 * dim, dim, generator=g, dtype=dtype) + 0.5 * torch.randn(dim, generator=g, dtype=dtype)
    return samples.T @ samples / samples.shape[0]


def make_concept(Concept, layers, towers, trigger="sks", superclass="dog", model="sd1", seed=0,
                 covariance=None, name="", **overrides):
    """A Concept (the class is passed in, so host tests can use the pack's own copy)."""
    g = torch.Generator().manual_seed(1000 + seed)
    dim = sum(towers.values())
    C = covariance if covariance is not None else random_covariance(dim, seed)
    i_star = torch.randn(dim, generator=g, dtype=torch.float64)
    fields = dict(
        trigger=trigger, superclass=superclass, model=model, context_dim=dim,
        embeddings={t: torch.randn(w, generator=g) * 0.02 for t, w in towers.items()},
        i_star=i_star.float(), G_i_star=torch.linalg.solve(C, i_star).float(),
        superclass_encoding=(i_star + 0.3 * torch.randn(dim, generator=g, dtype=torch.float64)).float(),
        v_targets={p: torch.randn(w, generator=g) for p, w in layers},
        beta=0.7, tau=0.15, covariance_sha256="ab" * 32, name=name or f"{trigger}.safetensors",
        info={"perfusion.steps": "400"})
    fields.update(overrides)
    return Concept(**fields)
