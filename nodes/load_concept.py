"""Node "Load Rank-1 Concept" (PerfusionLoadConcept)."""

from __future__ import annotations

from ..core.concept_file import read_concept
from ..core.gate_settings import SLIDERS
from . import model_folder
from .clip_patch import add_concept_to_clip
from .model_patch import apply_concept

_MIN, _MAX, _STEP, _TIP = SLIDERS["strength"]


class PerfusionLoadConcept:
    DESCRIPTION = ("Applies a Perfusion concept (a tiny .safetensors file from models/perfusion): key-locked, "
                   "gated rank-1 edits of every cross-attention K and V, and the trigger word in prompts "
                   "encoded with the CLIP output. Chain several to combine concepts.")
    CATEGORY = "perfusion"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("model", "clip")
    OUTPUT_TOOLTIPS = ("The model with the concept's edit.",
                       "Encode prompts with this CLIP so the trigger word means the concept.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model (LoRAs may be applied before or after)."}),
            "clip": ("CLIP", {"tooltip": "The text encoder of the same checkpoint."}),
            "concept_name": (model_folder.concept_names(), {"tooltip": "A concept file in models/perfusion."}),
            "strength": ("FLOAT", {"default": 1.0, "min": _MIN, "max": _MAX, "step": _STEP,
                                   "display": "slider", "tooltip": _TIP}),
        }}

    def load(self, model, clip, concept_name, strength):
        concept = read_concept(model_folder.concept_path(concept_name), name=concept_name)
        patched_model = apply_concept(model, concept, strength)
        patched_clip = add_concept_to_clip(clip, concept)
        return (patched_model, patched_clip)
