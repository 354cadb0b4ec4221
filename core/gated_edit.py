"""Perfusion's key-locked, gated rank-1 edit of cross-attention K and V (Tewel et al. 2023).

Notation, for one cross-attention layer and N concepts c (D: context width, d: projection width):

    e       [D]     one context token (text-encoder output); applied row-wise to every token
    W       [d, D]  the layer's *current* to_k / to_v weight. We never read it: we call the layer,
                    so LoRA, lowvram casting and weight hooks stay in charge of it.
    i_c     [D]     concept target input i*                     (file: ``i_star``)
    Gi_c    [D]     G i_c, G = C^-1 (C: text-encoding moments)  (file: ``G_i_star``)
    su_c    [D]     superclass encoding                         (file: ``superclass_encoding``)
    o_c     [d]     target output: K: W su_c (key lock), V: learned (file: ``v_target.<layer>``)
    lam_c           strength; beta_c, tau_c: gate bias and temperature

    s_c(e) = i_c^T G e / i_c^T G i_c                        similarity              (paper Eq. 3)
    g_c(e) = sigmoid((s_c(e) - beta_c) / tau_c)             gate                    (paper Eq. 3)
    a(e)   = (I^T G I)^-1 I^T G e       [N]                 G-orthogonal projection (paper App. B)
    h(e)   = W e + sum_c lam_c [ g_c(e) o_c - a_c(e) W i_c ]                       (paper Eq. 4)

With one concept a(e) = s(e). Because W is linear, all but the learned value target fold into the
layer's *input*, which is the same for every layer of the UNet:

    K:  h = W (e + sum_c lam_c [g_c(e) su_c - a_c(e) i_c])            = W key_input
    V:  h = W (e - sum_c lam_c a_c(e) i_c) + sum_c lam_c g_c(e) o_c   = W value_input + gates @ O_V

So per forward we compute ``key_input``/``value_input`` once (O(T (D N)) in float32), every layer
runs its projection once on them, and a value layer adds one [T, N] @ [N, d] product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConceptError

# A G-Gram matrix I^T G I with a larger condition number than this is treated as singular: the
# concepts' target inputs are (nearly) the same direction and no exact joint projection exists.
MAX_GRAM_CONDITION = 1e8


def gate(similarity: torch.Tensor, beta, tau) -> torch.Tensor:
    """g = sigmoid((s - beta) / tau), paper Eq. 3. Shapes broadcast; keep inputs float32."""
    return torch.sigmoid((similarity - beta) / tau)


class ProjectionBasis:
    """What the edit needs of an ordered set of N concepts, precomputed once (float32).

    ``coefficients`` [D, 2N]: e @ coefficients = [s_1..s_N, a_1..a_N] for a token e, where
    s_c = Gi_c^T e / (i_c^T Gi_c) and a = (I^T G I)^-1 (G I)^T e, the exact joint projection.
    ``i_star`` [N, D] and ``superclass`` [N, D] turn coefficients back into input-space edits.
    """

    def __init__(self, i_star: torch.Tensor, g_i_star: torch.Tensor, superclass: torch.Tensor,
                 names: list[str] | None = None):
        if i_star.ndim != 2 or i_star.shape != g_i_star.shape or i_star.shape != superclass.shape:
            raise ValueError(f"i_star, G_i_star and superclass_encoding must all be [N, D]; got "
                             f"{tuple(i_star.shape)}, {tuple(g_i_star.shape)}, {tuple(superclass.shape)}")
        names = names or [f"concept {k}" for k in range(i_star.shape[0])]
        i64, gi64 = i_star.double(), g_i_star.double()
        # I^T G I, entry (a, b) = i_a . G i_b; G is symmetric, so symmetrise away rounding.
        gram = i64 @ gi64.T
        gram = 0.5 * (gram + gram.T)
        energy = torch.diagonal(gram)
        for k, en in enumerate(energy.tolist()):
            if not en > 0:
                raise ConceptError(f"{names[k]}: i_star . G_i_star = {en:.3g}, expected a positive "
                                   "number (G must be positive definite); the file is damaged")
        cond = torch.linalg.cond(gram).item()
        if not cond < MAX_GRAM_CONDITION:
            raise ConceptError(
                "these concepts cannot be combined: their target inputs are (nearly) the same "
                f"direction in the text encoder's metric (condition number {cond:.3g}): "
                + ", ".join(names))
        similarity_rows = gi64 / energy[:, None]                 # [N, D]
        projection_rows = torch.linalg.solve(gram, gi64)         # [N, D]: (I^T G I)^-1 (G I)^T
        self.count = i_star.shape[0]
        self.coefficients = torch.cat([similarity_rows, projection_rows]).T.float().contiguous()
        self.i_star = i_star.float().contiguous()
        self.superclass = superclass.float().contiguous()

    def to(self, device) -> "ProjectionBasis":
        clone = object.__new__(ProjectionBasis)
        clone.count = self.count
        clone.coefficients = self.coefficients.to(device)
        clone.i_star = self.i_star.to(device)
        clone.superclass = self.superclass.to(device)
        return clone


@dataclass
class EditedInputs:
    """The per-forward result that every layer shares (see module docstring)."""
    key_input: torch.Tensor      # [..., D], model dtype
    value_input: torch.Tensor    # [..., D], model dtype
    value_gates: torch.Tensor    # [..., N] = lam_c g_c(e), model dtype; multiplies O_V [N, d]


def _input_edit(context: torch.Tensor, basis: ProjectionBasis, strength, beta, tau):
    """float32 (value_input, lam*g, key_input) for one context, all [..., D] / [..., N]."""
    e = context.float()
    coefficients = e @ basis.coefficients                        # [..., 2N]
    similarity, projection = coefficients.split(basis.count, dim=-1)
    weighted_gates = gate(similarity, beta, tau) * strength      # lam_c g_c(e)
    value_input = e - (projection * strength) @ basis.i_star     # e - sum lam_c a_c i_c
    key_input = value_input + weighted_gates @ basis.superclass  # + sum lam_c g_c su_c
    return value_input, weighted_gates, key_input


def edit_inputs(context: torch.Tensor, basis: ProjectionBasis, strength: torch.Tensor,
                beta: torch.Tensor, tau: torch.Tensor,
                key_context: torch.Tensor | None = None, key_active: torch.Tensor | None = None) -> EditedInputs:
    """Edited K and V layer inputs for ``context`` [..., D] (any dtype; math in float32).

    ``strength``, ``beta``, ``tau``: float32 [N] on the context's device.
    ``key_context``: global key locking (spec 4.2): the keys come from the gated edit of this
    context (the prompt with every trigger replaced by its superclass) instead of ``context``.
    ``key_active``: a bool tensor (on the device); where False the keys stay those of ``context``
    (chosen on the device, without reading it on the host).
    """
    value_input, weighted_gates, key_input = _input_edit(context, basis, strength, beta, tau)
    if key_context is not None:
        global_key = _input_edit(key_context, basis, strength, beta, tau)[2]
        key_input = global_key if key_active is None else torch.where(key_active, global_key, key_input)
    dtype = context.dtype
    return EditedInputs(key_input.to(dtype), value_input.to(dtype), weighted_gates.to(dtype))


def add_value_targets(value_output: torch.Tensor, value_gates: torch.Tensor,
                      value_targets: torch.Tensor) -> torch.Tensor:
    """W value_input + sum_c lam_c g_c o_c: [..., d] + [..., N] @ [N, d] (model dtype).

    ``value_output`` is the fresh output of the layer's own forward, so without autograd we add in
    place: the add is one memory pass over the output, and allocating a second one doubled its cost.
    """
    gates = value_gates.reshape(-1, value_gates.shape[-1])
    if not value_output.requires_grad and not gates.requires_grad and value_output.is_contiguous():
        value_output.view(-1, value_output.shape[-1]).addmm_(gates, value_targets)
        return value_output
    flat = torch.addmm(value_output.reshape(-1, value_output.shape[-1]), gates, value_targets)
    return flat.view(value_output.shape)
