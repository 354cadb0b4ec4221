"""The concepts on one model, and the per-forward state of their edit.

A ``ConceptStack`` is immutable in what it edits (concept tensors, layer set) and is shared by every
clone of the patched model. Which concepts act, and how, comes per forward from the gate settings
in ``transformer_options`` (moving a slider changes only those), turned into a cached ``ForwardPlan``.

Per forward, every cross-attention layer's to_k / to_v calls ``key_forward`` / ``value_forward``
with the same context tensor; the edited inputs are computed for the first and reused by the rest
(see gated_edit.py for why one computation serves every layer).
"""

from __future__ import annotations

import logging

import torch

from .errors import ConceptError
from .gate_settings import GateSettings
from .gated_edit import ProjectionBasis, add_value_targets, edit_inputs

log = logging.getLogger("perfusion")

# Keys shared with nodes/: transformer_options[OPTIONS_KEY] = {trigger: GateSettings};
# SUPER_CONTEXT_KEY is the model cond that carries the prompt's superclass version (global key lock).
OPTIONS_KEY = "perfusion"
SUPER_CONTEXT_KEY = "perfusion_superclass_context"


class ForwardPlan:
    """One forward's strength, beta and tau for every concept (float32 [N]; off concepts have 0).

    ``windows``: for a plan made against the sampler's sigma *tensor* (apply_model_wrapper), the
    (sigma high, sigma low) bounds [2, N] of each concept's schedule (unscheduled: +inf, -inf). They
    are applied on the device, per forward (``parameters(device, sigma)``): the sampling path never
    reads a tensor value on the host, so it never waits for the device (no per-step sync)."""

    def __init__(self, indices, strength, beta, tau, global_lock, windows=None):
        self.indices = tuple(indices)
        self.global_lock = global_lock
        self._values = torch.tensor([strength, beta, tau], dtype=torch.float32)
        self._windows = None if windows is None else torch.tensor(windows, dtype=torch.float32)
        self._on_device = {}

    @property
    def scheduled(self) -> bool:
        return self._windows is not None

    def parameters(self, device, sigma=None):
        """(strength, beta, tau) on ``device``; with ``sigma`` (this forward's timestep tensor, on the
        device) a scheduled concept's strength is 0 outside its window, computed there."""
        if device not in self._on_device:
            windows = None if self._windows is None else self._windows.to(device)
            self._on_device[device] = (tuple(self._values.to(device).unbind(0)), windows)
        (strength, beta, tau), windows = self._on_device[device]
        if windows is not None and sigma is not None:
            current = sigma.detach().max().to(device=strength.device, dtype=torch.float32)
            strength = strength * ((current <= windows[0]) & (current >= windows[1]))
        return strength, beta, tau

    def release(self):
        """Drop the copies made for a device (the model was offloaded); made again when next used."""
        self._on_device = {}


_UNSCHEDULED = (float("inf"), float("-inf"))


class ConceptStack:
    def __init__(self, concepts, defaults: dict):
        """``concepts``: Concept objects already checked against the model (same layers, width);
        ``defaults``: {trigger: GateSettings}, used when no sampler supplies settings."""
        self.concepts = tuple(concepts)
        self.triggers = tuple(c.trigger for c in self.concepts)
        if len(set(self.triggers)) != len(self.triggers):
            raise ConceptError(f"two concepts use the same trigger: {', '.join(self.triggers)}")
        first = self.concepts[0]
        self.context_dim = first.context_dim
        self.layer_paths = tuple(first.v_targets)
        self.value_targets = {path: torch.stack([c.v_targets[path] for c in self.concepts])
                              for path in self.layer_paths}                     # path -> [N, d]
        self._vectors = tuple(torch.stack([getattr(c, k) for c in self.concepts])
                              for k in ("i_star", "G_i_star", "superclass_encoding"))
        # Build the joint basis now so an impossible combination fails at load, not mid-sampling.
        self._bases = {}
        self._basis(tuple(range(len(self.concepts))), torch.device("cpu"))
        self._targets = {}
        self._plans = {}
        self._percent_sigma = {}
        self.defaults = dict(defaults)
        self.default_plan = self.plan(self.defaults)
        self._current = None            # (plan, superclass context, sigma tensor) inside a sampler forward
        self._cached = None             # (context, plan, superclass context, EditedInputs)
        self._warned_global = False

    # ---- plans -------------------------------------------------------------------------------
    def plan(self, settings: dict, sigma=None, percent_to_sigma=None):
        """The ForwardPlan for these settings at this noise level, or None if no concept acts.

        A concept that is off (strength 0, or outside its schedule window) stays in the joint
        projection with lambda = 0, exactly as in the formula: turning one concept down to 0 moves
        the others continuously, and only all-zero skips the edit (bit-identical to the base model).

        ``sigma``: a number (or a callable giving one) decides the schedule here, on the host; a
        tensor (the sampler's timestep, on the device) is never read here: the plan carries the
        windows and ``parameters(device, sigma)`` applies them on the device. With lambda = 0 the
        edited K and V equal the plain ones bit for bit, so both give the same result.
        """
        on_device = torch.is_tensor(sigma)
        values, windows = [], []
        for trigger in self.triggers:
            s: GateSettings = settings.get(trigger) or self.defaults.get(trigger) or GateSettings()
            strength, window = s.strength, _UNSCHEDULED
            if strength != 0.0 and s.scheduled and sigma is not None and percent_to_sigma is not None:
                high, low = self._sigma_at(percent_to_sigma, s.start_percent), self._sigma_at(percent_to_sigma, s.end_percent)
                if on_device:
                    window = (high, low)
                else:
                    current = float(sigma() if callable(sigma) else sigma)
                    if current > high or current < low:
                        strength = 0.0
            values.append((strength, s.beta, s.tau, s.key_lock == "global" and strength != 0.0))
            windows.append(window)
        if all(v[0] == 0.0 for v in values):
            return None
        scheduled = any(w != _UNSCHEDULED for w in windows)
        key = (tuple(values), tuple(windows) if scheduled else None)
        plan = self._plans.get(key)
        if plan is None:
            strength, beta, tau, lock = zip(*values)
            plan = self._plans[key] = ForwardPlan(range(len(self.triggers)), strength, beta, tau, any(lock),
                                                  [list(bound) for bound in zip(*windows)] if scheduled else None)
        return plan

    def _sigma_at(self, percent_to_sigma, percent):
        key = (percent_to_sigma, percent)
        if key not in self._percent_sigma:
            self._percent_sigma[key] = float(percent_to_sigma(percent))
        return self._percent_sigma[key]

    def begin_forward(self, plan, superclass_context=None, sigma=None):
        """``sigma``: this forward's timestep tensor, for a plan with schedule windows."""
        previous = self._current
        self._current, self._cached = (plan, superclass_context, sigma), None
        return previous

    def end_forward(self, previous):
        self._current, self._cached = previous, None

    def prepare(self, context):
        """Compute this forward's edited inputs for ``context`` now (see _edited); for training, so
        they are made outside any checkpointed block."""
        self._edited(context)

    def release(self):
        """Drop per-forward references and every copy made for the model's device and dtype (called
        when the edit is ejected: the model is unloaded, offloaded or replaced by another clone).
        The CPU originals stay; the next forward makes the copies again where the model then is."""
        self._cached = None
        self._bases = {key: basis for key, basis in self._bases.items() if key[-1] == torch.device("cpu")}
        self._targets = {}
        for plan in self._plans.values():
            plan.release()

    # ---- the edit ----------------------------------------------------------------------------
    def _basis(self, indices, device):
        key = (indices, device)
        basis = self._bases.get(key)
        if basis is None:
            cpu = self._bases.get((indices, torch.device("cpu")))
            if cpu is None:
                i, gi, su = (v[list(indices)] for v in self._vectors)
                cpu = ProjectionBasis(i, gi, su, names=[self.concepts[k].label for k in indices])
                self._bases[(indices, torch.device("cpu"))] = cpu
            basis = self._bases[key] = cpu if device == torch.device("cpu") else cpu.to(device)
        return basis

    def _value_targets(self, plan, path, device, dtype):
        key = (plan.indices, path, device, dtype)
        targets = self._targets.get(key)
        if targets is None:
            targets = self.value_targets[path][list(plan.indices)].to(device=device, dtype=dtype)
            self._targets[key] = targets
        return targets

    def _edited(self, context):
        plan, superclass_context, sigma = self._current or (self.default_plan, None, None)
        if plan is None or context.shape[-1] != self.context_dim:
            return None, None
        cached = self._cached
        if cached is not None and cached[0] is context and cached[1] is plan and cached[2] is superclass_context:
            return plan, cached[3]
        key_context = None
        if plan.global_lock:
            if superclass_context is not None and superclass_context.shape == context.shape:
                key_context = superclass_context.to(context.device)
            elif not self._warned_global:
                self._warned_global = True
                log.warning("Perfusion: key_lock 'global' needs the prompt encoded by the CLIP output of "
                            "'Load Rank-1 Concept'; using local key locking for this prompt")
        strength, beta, tau = plan.parameters(context.device, sigma)
        # Scheduled concepts all outside their windows: global key locking is off too (as the host-side
        # plan gives None then), decided on the device.
        key_active = (strength != 0).any() if key_context is not None and plan.scheduled and sigma is not None else None
        edited = edit_inputs(context, self._basis(plan.indices, context.device), strength, beta, tau, key_context,
                             key_active=key_active)
        self._cached = (context, plan, superclass_context, edited)
        return plan, edited

    def key_forward(self, path, original, context, *args, **kwargs):
        """Replaces ``attn2.to_k.forward``: W (e + sum lam [g su - a i])."""
        plan, edited = self._edited(context)
        if edited is None:
            return original(context, *args, **kwargs)
        return original(edited.key_input, *args, **kwargs)

    def value_forward(self, path, original, context, *args, **kwargs):
        """Replaces ``attn2.to_v.forward``: W (e - sum lam a i) + sum lam g o_V."""
        plan, edited = self._edited(context)
        if edited is None:
            return original(context, *args, **kwargs)
        out = original(edited.value_input, *args, **kwargs)
        return add_value_targets(out, edited.value_gates, self._value_targets(plan, path, out.device, out.dtype))

    # ---- the sampler side --------------------------------------------------------------------
    def apply_model_wrapper(self, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                            transformer_options={}, **kwargs):
        """APPLY_MODEL wrapper: turns this forward's gate settings and noise level into a plan."""
        superclass_context = kwargs.pop(SUPER_CONTEXT_KEY, None)
        settings = transformer_options.get(OPTIONS_KEY) or {}
        model_sampling = getattr(executor.class_obj, "model_sampling", None)
        # t stays on the device: schedule windows are applied there (ForwardPlan.parameters).
        plan = self.plan(settings, sigma=t, percent_to_sigma=getattr(model_sampling, "percent_to_sigma", None))
        previous = self.begin_forward(plan, superclass_context, t if plan is not None and plan.scheduled else None)
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            self.end_forward(previous)
