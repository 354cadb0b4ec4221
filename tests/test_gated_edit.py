"""The edit against a dense float64 implementation of the issue's formula (paper Eq. 3, 4, App. B)."""

import pytest
import torch

from concept_factory import random_covariance
from core.gated_edit import ProjectionBasis, add_value_targets, edit_inputs, gate
from core.errors import ConceptError

D, T, B = 48, 11, 2


def reference(E, W, C, I, O, lam, beta, tau):
    """h(e) = W e + sum_c lam_c [sigmoid((s_c - beta_c)/tau_c) o_c - a_c(e) W i_c], token by token.

    E [B, T, D], W [d, D], C [D, D], I [N, D], O [N, d]; float64, no shortcuts.
    """
    G = torch.linalg.inv(C)
    gram = I @ G @ I.T
    out = torch.empty(E.shape[0], E.shape[1], W.shape[0], dtype=torch.float64)
    for b in range(E.shape[0]):
        for t in range(E.shape[1]):
            e = E[b, t]
            a = torch.linalg.solve(gram, I @ G @ e)           # G-orthogonal projection coefficients
            h = W @ e
            for c in range(I.shape[0]):
                s = (I[c] @ G @ e) / (I[c] @ G @ I[c])
                g = 1.0 / (1.0 + torch.exp(-(s - beta[c]) / tau[c]))
                h = h + lam[c] * (g * O[c] - a[c] * (W @ I[c]))
            out[b, t] = h
    return out


def problem(n, seed=0, d=40):
    g = torch.Generator().manual_seed(seed)
    C = random_covariance(D, seed)
    I = torch.randn(n, D, generator=g, dtype=torch.float64)
    su = I + 0.4 * torch.randn(n, D, generator=g, dtype=torch.float64)
    W = torch.randn(d, D, generator=g, dtype=torch.float64) / D ** 0.5
    OV = torch.randn(n, d, generator=g, dtype=torch.float64)
    E = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    E[0, 3] = I[0]                                   # a token that is exactly the concept
    E[1, 5] = 0.9 * I[-1] + 0.1 * E[1, 5]
    lam = torch.linspace(1.0, 0.5, n, dtype=torch.float64)
    beta = torch.linspace(0.7, 0.5, n, dtype=torch.float64)
    tau = torch.linspace(0.15, 0.2, n, dtype=torch.float64)
    basis = ProjectionBasis(I.float(), (torch.linalg.solve(C, I.T)).T.float(), su.float())
    return C, I, su, W, OV, E, lam, beta, tau, basis


def pack_forward(E, W, OV, lam, beta, tau, basis, key_context=None):
    f = lambda x: x.double() @ W.T                   # the layer: "call the layer", never read W
    edited = edit_inputs(E, basis, lam.float(), beta.float(), tau.float(), key_context)
    K = f(edited.key_input)
    V = add_value_targets(f(edited.value_input).float(), edited.value_gates.float(), OV.float()).double()
    return K, V


@pytest.mark.parametrize("n", [1, 3])
def test_edit_matches_dense_reference(n):
    C, I, su, W, OV, E, lam, beta, tau, basis = problem(n)
    K, V = pack_forward(E.float(), W, OV, lam, beta, tau, basis)
    K_ref = reference(E, W, C, I, (su @ W.T), lam, beta, tau)      # key lock: o_K = W e_super
    V_ref = reference(E, W, C, I, OV, lam, beta, tau)
    assert torch.allclose(K, K_ref, rtol=1e-4, atol=1e-4), (K - K_ref).abs().max()
    assert torch.allclose(V, V_ref, rtol=1e-4, atol=1e-4), (V - V_ref).abs().max()
    # and the edit is not a no-op: the concept token moved
    assert (V_ref[0, 3] - E[0, 3] @ W.T).abs().max() > 0.1


def test_single_concept_projection_is_the_similarity():
    C, I, su, W, OV, E, lam, beta, tau, basis = problem(1)
    coefficients = E.float() @ basis.coefficients
    s, a = coefficients[..., 0], coefficients[..., 1]
    assert torch.allclose(s, a, rtol=1e-5, atol=1e-5)
    assert torch.isclose(s[0, 3], torch.tensor(1.0), atol=1e-5)          # s(i*) = 1


def test_joint_projection_is_exact():
    C, I, su, W, OV, E, lam, beta, tau, basis = problem(3)
    G = torch.linalg.inv(C)
    n = I.shape[0]
    a = (E.double() @ basis.coefficients.double())[..., n:]
    e_perp = E.double() - a @ I                                          # e - P e
    assert (e_perp @ G @ I.T).abs().max() < 1e-3 * (E.double() @ G @ I.T).abs().max()   # G-orthogonal to every i_c
    a_i = I @ basis.coefficients.double()[:, n:]                         # P i_c = i_c
    assert torch.allclose(a_i, torch.eye(n, dtype=torch.float64), atol=1e-4)


def test_g_orthogonal_concepts_equal_the_sum_of_single_edits():
    C, I, su, W, OV, E, lam, beta, tau, _ = problem(2)
    G = torch.linalg.inv(C)
    I[1] = I[1] - (I[1] @ G @ I[0]) / (I[0] @ G @ I[0]) * I[0]          # make i_2 G-orthogonal to i_1
    gi = (G @ I.T).T.float()
    joint = ProjectionBasis(I.float(), gi, su.float())
    singles = [ProjectionBasis(I[c:c + 1].float(), gi[c:c + 1], su[c:c + 1].float()) for c in range(2)]
    Kj, Vj = pack_forward(E.float(), W, OV, lam, beta, tau, joint)
    base = E.double() @ W.T
    K_sum, V_sum = base.clone(), base.clone()
    for c, s in enumerate(singles):
        Kc, Vc = pack_forward(E.float(), W, OV[c:c + 1], lam[c:c + 1], beta[c:c + 1], tau[c:c + 1], s)
        K_sum += Kc - base
        V_sum += Vc - base
    assert torch.allclose(Kj, K_sum, atol=1e-4) and torch.allclose(Vj, V_sum, atol=1e-4)


def test_non_orthogonal_concepts_differ_from_the_naive_sum():
    C, I, su, W, OV, E, lam, beta, tau, _ = problem(2, seed=3)
    I[1] = I[0] + 0.5 * I[1]                                             # strongly overlapping
    gi = (torch.linalg.solve(C, I.T)).T.float()
    joint = ProjectionBasis(I.float(), gi, su.float())
    Vj = pack_forward(E.float(), W, OV, lam, beta, tau, joint)[1]
    assert torch.allclose(Vj, reference(E, W, C, I, OV, lam, beta, tau), rtol=1e-3, atol=1e-3)
    naive = E.double() @ W.T
    for c in range(2):
        s = ProjectionBasis(I[c:c + 1].float(), gi[c:c + 1], su[c:c + 1].float())
        naive = naive + pack_forward(E.float(), W, OV[c:c + 1], lam[c:c + 1], beta[c:c + 1], tau[c:c + 1], s)[1] - E.double() @ W.T
    assert (naive - Vj).abs().max() > 1e-2


def test_zero_strength_edits_nothing():
    C, I, su, W, OV, E, lam, beta, tau, basis = problem(2)
    zero = torch.zeros(2)
    edited = edit_inputs(E.float(), basis, zero, beta.float(), tau.float())
    assert torch.equal(edited.key_input, E.float()) and torch.equal(edited.value_input, E.float())
    assert torch.count_nonzero(edited.value_gates) == 0


def test_half_precision_context_computes_the_gate_in_float32():
    C, I, su, W, OV, E, lam, beta, tau, basis = problem(1)
    E16 = E.half()
    edited = edit_inputs(E16, basis, lam.float(), beta.float(), tau.float())
    assert edited.key_input.dtype == torch.float16 and edited.value_gates.dtype == torch.float16
    exact = edit_inputs(E16.float(), basis, lam.float(), beta.float(), tau.float())
    assert torch.equal(edited.value_input, exact.value_input.half())    # upcast, compute, round once
    assert torch.equal(edited.value_gates, exact.value_gates.half())


def test_global_key_lock_takes_keys_from_the_superclass_prompt():
    C, I, su, W, OV, E, lam, beta, tau, basis = problem(1)
    E_super = E.clone()
    E_super[0, 3] = su[0]
    K, V = pack_forward(E.float(), W, OV, lam, beta, tau, basis, key_context=E_super.float())
    assert torch.allclose(K, reference(E_super, W, C, I, su @ W.T, lam, beta, tau), rtol=1e-4, atol=1e-4)
    assert torch.allclose(V, reference(E, W, C, I, OV, lam, beta, tau), rtol=1e-4, atol=1e-4)


def test_gate_values_match_the_spec_table():
    s = torch.tensor([1.0, 0.0])
    assert torch.allclose(gate(s, 0.7, 0.15), torch.tensor([0.881, 9.3e-3]), rtol=1e-2)
    assert torch.allclose(gate(s, 0.75, 0.1), torch.tensor([0.924, 5.5e-4]), rtol=1e-2)


def test_collinear_concepts_are_refused():
    C, I, su, W, OV, E, lam, beta, tau, _ = problem(2)
    I[1] = 2 * I[0]
    gi = (torch.linalg.solve(C, I.T)).T.float()
    with pytest.raises(ConceptError, match="cannot be combined"):
        ProjectionBasis(I.float(), gi, su.float(), names=["concept 'a'", "concept 'b'"])
