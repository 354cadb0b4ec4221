"""Node "Gate Strength" (PerfusionGateStrength): live fidelity / prompt-alignment control."""

from __future__ import annotations

from ..core.gate_settings import KEY_LOCKS, SLIDERS, GateSettings
from .model_patch import set_gate


def _slider(name, default):
    lo, hi, step, tip = SLIDERS[name]
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "display": "slider", "tooltip": tip})


class PerfusionGateStrength:
    DESCRIPTION = ("Sets the gate of the Perfusion concepts on a model: bias (beta), temperature (tau), strength, "
                   "key locking and the part of the schedule where they act. Changing it re-patches no weights "
                   "and re-encodes no prompt.")
    CATEGORY = "perfusion"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with these gate settings for the chosen concepts (nothing re-patched).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A model from 'Load Rank-1 Concept'."}),
            "trigger": ("STRING", {"default": "", "tooltip": "The concept's trigger word; empty = every concept on the model."}),
            "beta": _slider("beta", 0.7),
            "tau": _slider("tau", 0.15),
            "strength": _slider("strength", 1.0),
            "key_lock": (list(KEY_LOCKS), {"default": "local", "tooltip":
                         "local: the concept's keys are locked to its superclass. global: the keys of the whole "
                         "prompt come from its superclass version (richer scenes; try beta 0.4-0.6). It applies to "
                         "every concept on the model, whatever the trigger. Global needs prompts encoded with the "
                         "CLIP output of 'Load Rank-1 Concept'."}),
            "start_percent": _slider("start_percent", 0.0),
            "end_percent": _slider("end_percent", 1.0),
        }}

    def apply(self, model, trigger, beta, tau, strength, key_lock, start_percent, end_percent):
        settings = GateSettings(strength=strength, beta=beta, tau=tau, key_lock=key_lock,
                                start_percent=start_percent, end_percent=end_percent)
        return (set_gate(model, trigger, settings),)
