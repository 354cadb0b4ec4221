"""Puts a ConceptStack on a ComfyUI ModelPatcher.

Mechanism: a PatcherInjection (comfy.patcher_extension; ModelPatcher.inject_model / eject_model call it
when the model is loaded / replaced) overrides ``forward`` on the *instances*
``attn2.to_k`` / ``attn2.to_v`` of every cross-attention layer. The override receives the raw context
and calls the layer's own forward, so LoRA (merged or lowvram), weight casting, other packs'
attn2 patches and attn2 replace patches (IPAdapter) all still apply. ComfyUI ejects the override
whenever another clone is loaded. An APPLY_MODEL wrapper hands each forward its gate settings.
"""

from __future__ import annotations

import functools
import logging
import weakref
from dataclasses import replace

import torch

import comfy.conds
import comfy.patcher_extension

from ..core.concept_stack import OPTIONS_KEY, SUPER_CONTEXT_KEY, ConceptStack
from ..core.encoder_fingerprint import shared_encoder_check
from ..core.errors import ConceptError
from ..core.gate_settings import GateSettings

INJECTION_KEY = "perfusion"
WRAPPER_KEY = "perfusion"
_FAMILIES = (("SDXL", "sdxl"), ("SD20", "sd2"), ("SD15", "sd1"))
_OWNER = "_perfusion_previous_forward"
log = logging.getLogger("perfusion")


def cross_attention_layers(model) -> dict:
    """{attn2 path inside diffusion_model: module} in UNet order."""
    diffusion_model = model.get_model_object("diffusion_model")
    return {name: module for name, module in diffusion_model.named_modules()
            if name.endswith(".attn2") and hasattr(module, "to_k") and hasattr(module, "to_v")}


def model_family(model) -> tuple[str, int]:
    """("sd1" | "sd2" | "sdxl" | "unknown", cross-attention context width)."""
    layers = cross_attention_layers(model)
    if not layers:
        raise ConceptError("this model has no cross-attention layers; Perfusion concepts need an "
                           "SD1.x, SD2.x or SDXL UNet")
    context_dim = next(iter(layers.values())).to_k.in_features
    config = getattr(model.model, "model_config", None)
    bases = [cls.__name__ for cls in type(config).__mro__] if config is not None else []
    for class_name, family in _FAMILIES:
        if class_name in bases:
            return family, context_dim
    return "unknown", context_dim


def check_concept_fits(concept, model) -> None:
    """Refuse a concept made for another model, naming the file and both sides."""
    family, context_dim = model_family(model)
    if concept.model != family or concept.context_dim != context_dim:
        raise ConceptError(f"{concept.label} was made for {concept.model} (context {concept.context_dim}); "
                           f"this model is {family} ({context_dim})")
    layers = cross_attention_layers(model)
    missing = [p for p in layers if p not in concept.v_targets]
    extra = [p for p in concept.v_targets if p not in layers]
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"no value target for {len(missing)} of this model's layers (e.g. {missing[0]})")
        if extra:
            detail.append(f"{len(extra)} layers this model does not have (e.g. {extra[0]})")
        raise ConceptError(f"{concept.label} does not match this model's cross-attention layers: "
                           + "; ".join(detail) + ". It was made for a differently built checkpoint.")
    for path, module in layers.items():
        width = concept.v_targets[path].shape[0]
        if width != module.to_v.out_features:
            raise ConceptError(f"{concept.label}: v_target.{path} has {width} values; this model's layer "
                               f"has {module.to_v.out_features}")


def concept_stack(model) -> ConceptStack | None:
    injections = model.get_injections(INJECTION_KEY) or []
    return getattr(injections[0], "stack", None) if injections else None


def gate_settings(model) -> dict:
    return dict(model.model_options.get("transformer_options", {}).get(OPTIONS_KEY, {}))


class Injection(comfy.patcher_extension.PatcherInjection):
    """Overrides to_k / to_v forwards of every attn2 layer with the stack's edit.

    Clones share this object (ModelPatcher.clone copies injection lists) and copy ``is_injected``,
    so only the patcher that installed the overrides may remove them: a clone being garbage
    collected (ModelPatcher.__del__ ejects) must not strip the live model's edit.
    """

    def __init__(self, stack: ConceptStack):
        super().__init__(inject=self._inject, eject=self._eject)
        self.stack = stack
        self._installed = []        # (module, our forward)
        self._owner = None          # weakref to the patcher that installed them

    def _inject(self, patcher):
        self._owner = weakref.ref(patcher)
        if self._installed:         # already in place (a clone re-injecting): never wrap twice
            return
        layers = cross_attention_layers(patcher)
        for path in self.stack.layer_paths:
            for name, method in (("to_k", self.stack.key_forward), ("to_v", self.stack.value_forward)):
                module = getattr(layers[path], name)
                previous = module.__dict__.get("forward")     # another pack's instance override, if any
                forward = functools.partial(method, path, module.forward)
                module.__dict__[_OWNER] = previous
                module.forward = forward
                self._installed.append((module, forward))

    def _eject(self, patcher):
        owner = self._owner() if self._owner is not None else None
        if owner is not None and owner is not patcher:
            return
        for module, forward in reversed(self._installed):
            if module.__dict__.get("forward") is forward:
                previous = module.__dict__.pop(_OWNER, None)
                if previous is None:
                    del module.forward
                else:
                    module.forward = previous
            # else: someone wrapped ours since; they restore it when they eject.
        self._installed.clear()
        self._owner = None
        self.stack.release()


def _with_superclass_context(cond: dict) -> dict:
    """Every cond gets a superclass version of its context: its own when it has none (prompts
    without a trigger, prompts from another CLIP), when it was zeroed (ConditioningZeroOut keeps
    model_conds) or concatenated to another length. Same keys on every cond = cond/uncond batch."""
    cross = cond.get("cross_attn")
    if cross is None:
        return cond
    model_conds = cond.get("model_conds", {})
    current = model_conds.get(SUPER_CONTEXT_KEY)
    if current is not None and current.cond.shape == cross.shape and bool(torch.any(cross != 0)):
        return cond
    cond = dict(cond)
    cond["model_conds"] = {**model_conds, SUPER_CONTEXT_KEY: comfy.conds.CONDCrossAttn(cross)}
    return cond


def _outer_sample_wrapper(executor, *args, **kwargs):
    """Once per sampling call (not per step): complete the conds' superclass versions."""
    guider = executor.class_obj
    conds = getattr(guider, "conds", None)
    if isinstance(conds, dict):
        guider.conds = {k: [_with_superclass_context(c) for c in v] for k, v in conds.items()}
    return executor(*args, **kwargs)


def apply_concept(model, concept, strength: float):
    """A clone of ``model`` with ``concept`` added to its concepts (joint projection, paper App. B)."""
    check_concept_fits(concept, model)
    current = concept_stack(model)
    concepts = list(current.concepts) if current else []
    for other in concepts:
        if other.trigger == concept.trigger:
            raise ConceptError(f"{concept.label} uses the trigger '{concept.trigger}', which "
                               f"{other.label} on this model already uses; a trigger must be unique")
        error, warning = shared_encoder_check(other, concept)
        if error:
            raise ConceptError(error)
        if warning:
            log.warning("Perfusion: %s", warning)
    settings = gate_settings(model)
    key_lock = next(iter(settings.values())).key_lock if settings else "local"    # model-wide
    settings[concept.trigger] = GateSettings(strength=strength, beta=concept.beta, tau=concept.tau,
                                             key_lock=key_lock).validated(f"Load Rank-1 Concept ({concept.name})")
    stack = ConceptStack(concepts + [concept], settings)

    patched = model.clone()
    patched.set_injections(INJECTION_KEY, [Injection(stack)])
    wrappers = comfy.patcher_extension.WrappersMP
    patched.remove_wrappers_with_key(wrappers.APPLY_MODEL, WRAPPER_KEY)
    patched.add_wrapper_with_key(wrappers.APPLY_MODEL, WRAPPER_KEY, stack.apply_model_wrapper)
    patched.remove_wrappers_with_key(wrappers.OUTER_SAMPLE, WRAPPER_KEY)
    patched.add_wrapper_with_key(wrappers.OUTER_SAMPLE, WRAPPER_KEY, _outer_sample_wrapper)
    patched.model_options.setdefault("transformer_options", {})[OPTIONS_KEY] = settings
    return patched


def set_gate(model, trigger: str, settings: GateSettings):
    """A clone of ``model`` whose concept(s) use ``settings``; only model options change."""
    stack = concept_stack(model)
    if stack is None:
        raise ConceptError("Gate Strength: this model has no Perfusion concept; connect the MODEL output "
                           "of 'Load Rank-1 Concept' to it")
    trigger = trigger.strip()
    if trigger and trigger not in stack.triggers:
        raise ConceptError(f"Gate Strength: no concept with trigger '{trigger}' on this model; its "
                           f"triggers are {', '.join(stack.triggers)} (leave it empty for all)")
    settings = settings.validated("Gate Strength")
    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    table = dict(options.get(OPTIONS_KEY, {}))
    for t in ([trigger] if trigger else stack.triggers):
        table[t] = settings
    # Key locking acts on the whole prompt (global replaces every key), so it is one choice per model.
    options[OPTIONS_KEY] = {t: replace(s, key_lock=settings.key_lock) for t, s in table.items()}
    return patched
