"""Core tests: the shrunk covariance (Ledoit-Wolf over captions), its inverse, the encoder fingerprint
and the CLIP layer names, against dense references."""

import math

import pytest
import torch

from core import covariance as cov
from core import encoder_fingerprint as fingerprints
from core.clip_layer import concept_layer, current_layer, layer_for
from core.concept_file import Concept
from core.errors import ConceptError


def captions(seed=0, n=60, dim=12, rank=None, scale=None):
    """Random 'captions': token encodings [n_k, dim] with a shared BOS row, as a causal encoder gives."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank or dim, dim, generator=g, dtype=torch.float64)
    if scale is not None:
        basis = basis * scale[:, None]
    bos = torch.randn(1, rank or dim, generator=g, dtype=torch.float64) @ basis
    out = []
    for _ in range(n):
        k = int(torch.randint(3, 9, (1,), generator=g))
        out.append(torch.cat([bos, torch.randn(k, rank or dim, generator=g, dtype=torch.float64) @ basis]))
    return out


def ledoit_wolf_reference(xs):
    """LW (2004) with captions as the sampling unit, written out: Z_k = (K/N) X_k^T X_k, S = mean Z_k."""
    K, N, D = len(xs), sum(x.shape[0] for x in xs), xs[0].shape[1]
    Z = [(K / N) * x.T @ x for x in xs]
    S = sum(Z) / K
    mu = torch.trace(S) / D
    I = torch.eye(D, dtype=torch.float64)
    d2 = ((S - mu * I) ** 2).sum()
    b2 = min(sum(((z - S) ** 2).sum() for z in Z) / K ** 2, d2)
    rho = b2 / d2
    return rho * mu * I + (1 - rho) * S, float(rho), S


def accumulate(xs):
    acc = cov.CovarianceAccumulator(xs[0].shape[1])
    for x in xs:
        acc.add(x.float())          # encodings arrive as float32
    return acc.estimate()


def test_ledoit_wolf_matches_the_written_out_estimator():
    xs = [x.float().double() for x in captions()]
    C_ref, rho_ref, S_ref = ledoit_wolf_reference(xs)
    est = accumulate(xs)
    assert torch.allclose(est.sample, S_ref, rtol=1e-10, atol=1e-12)
    assert est.ledoit_wolf == pytest.approx(rho_ref, rel=1e-8)
    assert est.intensity == pytest.approx(rho_ref, rel=1e-8) and 0 < est.intensity < 1
    assert torch.allclose(est.covariance, C_ref, rtol=1e-10, atol=1e-12)
    assert est.condition == pytest.approx(cov.condition_number(est.covariance), rel=1e-8)
    assert (est.tokens, est.captions) == (sum(x.shape[0] for x in xs), len(xs))


def test_shrinkage_moves_the_estimate_toward_the_true_moment():
    """What shrinkage is for: few samples in many dimensions; the shrunk C is closer to the truth."""
    dim = 40
    scale = torch.logspace(0, -1.5, dim, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0] * scale[:, None]
    truth = basis.T @ basis
    xs = [torch.randn(1, dim, generator=g, dtype=torch.float64) @ basis for _ in range(30)]   # 30 samples, 40 dims
    est = accumulate(xs)
    assert est.sample_condition == math.inf or est.sample_condition > 1e6          # S is singular
    assert est.condition < 1e3
    err = lambda m: float(((m - truth) ** 2).sum())
    assert err(est.covariance) < 0.8 * err(est.sample)


@pytest.mark.parametrize("rank", [1, 3])
def test_any_finite_encoder_gives_an_invertible_well_conditioned_covariance(rank):
    """Encodings confined to a few directions (a narrow corpus, a degenerate encoder): S is singular,
    C is not, and G = C^-1 exists with cond(C) <= MAX_CONDITION."""
    est = accumulate(captions(rank=rank, dim=16))
    assert torch.linalg.matrix_rank(est.sample).item() == rank
    assert 0 < est.condition <= cov.MAX_CONDITION * (1 + 1e-9)
    G = cov.invert(est.covariance)
    assert torch.allclose(G @ est.covariance, torch.eye(16, dtype=torch.float64), atol=1e-6)


def test_one_repeated_caption_hits_the_condition_floor():
    """b2 = 0 (every caption identical): Ledoit-Wolf's rho is 0, the floor keeps C invertible."""
    x = captions(n=1, dim=8, rank=2)[0]
    est = accumulate([x] * 20)
    assert est.ledoit_wolf == 0.0
    assert est.intensity > 0 and est.condition == pytest.approx(cov.MAX_CONDITION, rel=1e-6)


def test_condition_floor_is_exact():
    lo, hi, mu = 1e-9, 50.0, 2.0
    rho = cov._rho_for_condition(lo, hi, mu, 1e4)
    assert (rho * mu + (1 - rho) * hi) / (rho * mu + (1 - rho) * lo) == pytest.approx(1e4, rel=1e-9)
    assert cov._rho_for_condition(1.0, 10.0, 2.0, 1e4) == 0.0


def test_invert_refuses_only_damaged_matrices():
    with pytest.raises(ConceptError, match="NaN or Inf"):
        cov.invert(torch.full((3, 3), float("nan")), "the cached covariance")
    with pytest.raises(ConceptError, match="not positive definite"):
        cov.invert(-torch.eye(3), "the cached covariance")
    assert torch.allclose(cov.invert(torch.diag(torch.tensor([1e-8, 1.0, 1e8]))), torch.diag(torch.tensor([1e8, 1.0, 1e-8], dtype=torch.float64)))


def test_empty_and_zero_encodings_are_refused():
    with pytest.raises(ConceptError, match="no token encodings"):
        cov.CovarianceAccumulator(4).estimate()
    acc = cov.CovarianceAccumulator(4)
    acc.add(torch.zeros(3, 4))
    with pytest.raises(ConceptError, match="all zero"):
        acc.estimate()


def test_real_clip_l_covariance_is_inside_the_guaranteed_condition(tmp_path):
    """Reference point: lucidrains' perfusion-pytorch 0.1.23 ships C of CLIP ViT-L/14 encodings of
    LAION captions (cond 3.9e3, lambda_min / mu = 0.057): a real encoder's C is far inside the cap, so
    the floor never binds for it. Read from that package when it is installed (never copied here)."""
    import importlib.util
    import os
    try:                                        # the package's own imports need open_clip etc.: find, don't import
        spec = importlib.util.find_spec("perfusion_pytorch")
        path = os.path.join(spec.submodule_search_locations[0], "data", "covariance_CLIP_ViT-L-14.pt")
        C = torch.load(path, weights_only=True).double()
    except Exception as e:                      # noqa: BLE001 - any reason it is not there
        pytest.skip(f"perfusion-pytorch 0.1.23 is not installed ({type(e).__name__}); reference point only")
    condition = cov.condition_number(C)
    assert 3e3 < condition < 5e3
    assert condition < cov.MAX_CONDITION / 100
    assert torch.allclose(cov.invert(C) @ C, torch.eye(768, dtype=torch.float64), atol=1e-6)


def test_fingerprint_tolerance_and_text_round_trip():
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(len(fingerprints.PROBES), 77, 64, generator=g)
    eos = [5, 20, 12, 9, 3, 15, 14, 18]
    fp = fingerprints.fingerprint(enc, eos)
    assert fp.shape == (len(fingerprints.PROBES) * 4 * fingerprints.DIRECTIONS,) and fp.dtype == torch.float32
    assert torch.equal(fingerprints.from_text(fingerprints.to_text(fp)), fp)
    assert fingerprints.from_text("not base64!") is None and fingerprints.from_text("") is None
    rounded = fingerprints.fingerprint(enc.bfloat16().float(), eos)
    assert fingerprints.same_encoder(fp, rounded)
    other = fingerprints.fingerprint(enc + 0.2 * torch.randn(enc.shape, generator=g), eos)
    assert not fingerprints.same_encoder(fp, other)
    assert fingerprints.distance(fp, fp[:10]) == math.inf
    assert torch.equal(fingerprints.projection(64), fingerprints.projection(64))


class Tower:
    """The attributes of ComfyUI's SDClipModel that the layer names read."""

    def __init__(self, default=("last", None), normed=True, num_layers=12):
        self.options_default = (*default, True)
        self.layer, self.layer_idx = default
        self.num_layers, self.layer_norm_hidden_state = num_layers, normed


class SD1:
    def __init__(self):
        self.clip_l = Tower()


class SDXL:
    def __init__(self):
        self.clip_l = Tower(("hidden", -2), normed=False)
        self.clip_g = Tower(("hidden", -2), normed=False, num_layers=32)


def test_layer_names_follow_comfyui_set_clip_options():
    assert layer_for(SD1(), None) == "last" and layer_for(SD1(), -1) == "last"     # normed hidden -1 = last
    assert layer_for(SD1(), -2) == "-2" and layer_for(SD1(), -24) == "last"        # past the depth: last
    assert layer_for(SDXL(), None) == "-2" and layer_for(SDXL(), -1) == "-1"        # SDXL's -1 is not normed
    model = SD1()
    model.clip_l.layer, model.clip_l.layer_idx = "hidden", -3
    assert current_layer(model) == "-3"


def test_concept_without_layer_reads_as_its_family_default():
    base = dict(trigger="sks", superclass="dog", context_dim=4, embeddings={}, i_star=torch.ones(4),
                G_i_star=torch.ones(4), superclass_encoding=torch.ones(4), v_targets={})
    assert concept_layer(Concept(model="sd1", **base)) == "last"
    assert concept_layer(Concept(model="sdxl", **base)) == "-2"
    assert concept_layer(Concept(model="sd1", info={"perfusion.clip_layer": "-2"}, **base)) == "-2"


def _concept(name, key, fp=None, layer=None, corpus=None):
    info = {}
    if fp is not None:
        info["perfusion.encoder_fingerprint"] = fingerprints.to_text(fp)
    if layer:
        info["perfusion.clip_layer"] = layer
    if corpus:
        info["perfusion.corpus_sha256"] = corpus
    return Concept(trigger=name, superclass="dog", model="sd1", context_dim=4, embeddings={}, i_star=torch.ones(4),
                   G_i_star=torch.ones(4), superclass_encoding=torch.ones(4), v_targets={}, covariance_sha256=key,
                   info=info, name=f"{name}.safetensors")


def test_shared_encoder_check():
    fp = torch.randn(256, generator=torch.Generator().manual_seed(1))
    near, far = fp * (1 + 1e-3), fp + torch.randn(256, generator=torch.Generator().manual_seed(2))
    check = fingerprints.shared_encoder_check
    assert check(_concept("a", "k1", fp), _concept("b", "k1", far)) == (None, None)          # one cache entry
    assert check(_concept("a", "k1", fp), _concept("b", "k2", near)) == (None, None)         # recomputed cache
    error, _ = check(_concept("a", "k1", fp), _concept("b", "k2", far))
    assert "'a.safetensors' and 'b.safetensors'" in error and "different text encoders" in error and "differ by" in error
    error, _ = check(_concept("a", "k1", fp, layer="-2"), _concept("b", "k2", fp))
    assert "different text-encoder layers (-2 and -1 (last))" in error
    error, _ = check(_concept("a", "k1", fp, corpus="x"), _concept("b", "k2", near, corpus="y"))
    assert "caption corpora" in error
    error, warning = check(_concept("old", "weights-hash"), _concept("b", "k2", fp))
    assert error is None and "'old.safetensors' predates text-encoder fingerprints" in warning
