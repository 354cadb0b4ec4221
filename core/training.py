"""Training a Perfusion concept (spec section 6), the torch-only parts.

Trained: the token embedding v* (one vector per text tower) and the per-layer value targets o*_V.
Not trained (buffers): i*, the EMA (0.99) of the trigger token's encoding, and the superclass
encoding e_super that locks the keys (o*_K = W_k e_super). The forward in training is the gated edit
of gated_edit.py with the training beta/tau, so o*_V is learned *through* the gate (spec 2.2).
"""

from __future__ import annotations

import torch

from .concept_file import Concept
from .concept_stack import ConceptStack
from .gate_settings import GateSettings
from .gated_edit import ProjectionBasis

TEMPLATES = ("a photo of a {}", "a good photo of a {}", "the photo of a {}", "a good photo of the {}",
             "image of a {}", "image of the {}", "A photograph of {}", "A {} shown in a photo", "A photo of {}")
EMA_DECAY = 0.99


class TrainableConcept(torch.nn.Module):
    """The concept's learned tensors and buffers. ``G`` [D, D] is C^-1 (float64 in, float32 kept)."""

    def __init__(self, trigger, superclass, model, embeddings: dict, G: torch.Tensor, layer_widths: dict):
        super().__init__()
        self.trigger, self.superclass, self.model_family = trigger, superclass, model
        self.towers = tuple(embeddings)
        self.embeddings = torch.nn.ParameterDict(
            {t: torch.nn.Parameter(v.detach().float().clone()) for t, v in embeddings.items()})
        self.paths = tuple(layer_widths)
        # ParameterDict keys cannot contain '.', so value targets are a list in self.paths order.
        self.value_targets = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(w)) for w in layer_widths.values()])
        self.register_buffer("G", G.float())
        dim = G.shape[0]
        self.register_buffer("i_star", torch.zeros(dim))
        self.register_buffer("superclass_encoding", torch.zeros(dim))
        self.initialised = False

    def initialise(self, superclass_encoding: torch.Tensor, value_outputs: list):
        """First batch: i* = e_super (spec 4.3), o*_V = W_v e_super (spec 6.1)."""
        with torch.no_grad():
            self.superclass_encoding.copy_(superclass_encoding)
            self.i_star.copy_(superclass_encoding)
            for p, v in zip(self.value_targets, value_outputs):
                p.copy_(v.reshape(-1))
        self.initialised = True

    def update_i_star(self, concept_encoding: torch.Tensor):
        """i* <- 0.99 i* + 0.01 mean_b E[b, idx_b]   (per micro-batch, no gradient; spec 4.3)."""
        with torch.no_grad():
            self.i_star.mul_(EMA_DECAY).add_(concept_encoding.detach().to(self.i_star), alpha=1 - EMA_DECAY)

    def parameter_groups(self, lr_embedding, lr_values):
        return [{"params": list(self.embeddings.values()), "lr": lr_embedding},
                {"params": list(self.value_targets), "lr": lr_values}]

    def to_concept(self, beta, tau, covariance_sha256, info) -> Concept:
        G_i = (self.G.double() @ self.i_star.double()).float()
        return Concept(trigger=self.trigger, superclass=self.superclass, model=self.model_family,
                       context_dim=self.i_star.shape[0],
                       embeddings={t: v.detach().float().cpu() for t, v in self.embeddings.items()},
                       i_star=self.i_star.detach().cpu().clone(), G_i_star=G_i.cpu(),
                       superclass_encoding=self.superclass_encoding.detach().cpu().clone(),
                       v_targets={p: v.detach().float().cpu() for p, v in zip(self.paths, self.value_targets)},
                       beta=beta, tau=tau, covariance_sha256=covariance_sha256, info=info,
                       name=f"{self.trigger}.safetensors")


class TrainingStack(ConceptStack):
    """A ConceptStack over live training tensors: the basis follows i*, the value targets are
    the Parameters themselves (gradients flow), nothing is cached across micro-batches."""

    def __init__(self, trainable: TrainableConcept, beta: float, tau: float, strength: float = 1.0):
        """``strength`` 0 trains the embedding alone (textual inversion: no K/V edit in the UNet)."""
        self.trainable = trainable
        settings = {trainable.trigger: GateSettings(strength=strength, beta=beta, tau=tau)}
        self._index = {p: k for k, p in enumerate(trainable.paths)}
        super().__init__([trainable.to_concept(beta, tau, "", {})], settings)

    def refresh(self):
        """Call after i* moved: the next forward uses the new basis."""
        t = self.trainable
        G_i = (t.G @ t.i_star)[None]
        self._live = ProjectionBasis(t.i_star[None], G_i, t.superclass_encoding[None], names=[f"concept '{t.trigger}'"])
        self._bases.clear()
        self._cached = None

    def _basis(self, indices, device):
        if not hasattr(self, "_live"):       # during ConceptStack.__init__
            return super()._basis(indices, device)
        key = ("live", device)
        if key not in self._bases:
            self._bases[key] = self._live if device == torch.device("cpu") else self._live.to(device)
        return self._bases[key]

    def _value_targets(self, plan, path, device, dtype):
        return self.trainable.value_targets[self._index[path]].to(device=device, dtype=dtype)[None]


def objective_weight(sigma: torch.Tensor, v_prediction: bool, sigma_data: float = 1.0) -> torch.Tensor:
    """Turns ||x0_hat - x0||^2 into the model's own objective (x = x0 + sigma * eps):
    eps models: ||eps_hat - eps||^2 = ||x0_hat - x0||^2 / sigma^2;
    v models:   ||v_hat - v||^2   = ||x0_hat - x0||^2 (sigma^2 + sd^2) / (sigma sd)^2."""
    s2 = sigma.float() ** 2
    if v_prediction:
        return (s2 + sigma_data ** 2) / (s2 * sigma_data ** 2)
    return 1.0 / s2


def masked_mse(prediction, target, weight, mask=None):
    """Per-sample objective-weighted MSE, averaged over the mask (soft, [B, 1, h, w]) when given."""
    err = (prediction.float() - target.float()) ** 2
    if mask is None:
        per_sample = err.mean(dim=(1, 2, 3))
    else:
        m = mask.float().expand_as(err)
        per_sample = (err * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1e-8)
    return (per_sample * weight.reshape(-1)).mean()
