"""Node "Gate Sweep" (PerfusionGateSweep): one seed and prompt over a row of beta values (and
optionally strengths), as one labelled grid: the fidelity / prompt-alignment trade-off made visible."""

from __future__ import annotations

from dataclasses import replace

import comfy.samplers
import nodes as comfy_nodes

from ..core.errors import ConceptError
from ..core.gate_settings import SLIDERS, GateSettings
from ..core.grid import labelled_grid, parse_values
from .model_patch import concept_stack, gate_settings, set_gate


class PerfusionGateSweep:
    DESCRIPTION = ("Renders the same seed and prompt once per beta (columns) and strength (rows) and returns one "
                   "labelled grid: lower beta = closer to the subject, higher beta = closer to the prompt. No retraining.")
    CATEGORY = "perfusion"
    FUNCTION = "sweep"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)
    OUTPUT_TOOLTIPS = ("One image: a cell per beta (columns) and strength (rows), labelled.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A model from 'Load Rank-1 Concept' (or 'Gate Strength')."}),
            "vae": ("VAE", {"tooltip": "To decode each cell."}),
            "positive": ("CONDITIONING", {"tooltip": "Encoded with the CLIP of 'Load Rank-1 Concept' (trigger word included)."}),
            "negative": ("CONDITIONING", {"tooltip": "The negative prompt, as for KSampler."}),
            "latent_image": ("LATENT", {"tooltip": "Only its first image is used."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                             "tooltip": "The noise seed, the same for every cell."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000,
                              "tooltip": "Sampling steps per cell (each cell is a full sampling run)."}),
            "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance scale, as for KSampler."}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"tooltip": "The sampler, as for KSampler."}),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"tooltip": "The noise schedule, as for KSampler."}),
            "trigger": ("STRING", {"default": "", "tooltip": "The concept to sweep; empty = every concept on the model."}),
            "betas": ("STRING", {"default": "0.4, 0.5, 0.6, 0.7, 0.8", "tooltip": "Gate bias values, one column each."}),
            "strengths": ("STRING", {"default": "1.0", "tooltip": "Strength values, one row each."}),
            "tau": ("FLOAT", {"default": 0.15, "min": SLIDERS["tau"][0], "max": SLIDERS["tau"][1], "step": 0.01,
                              "tooltip": SLIDERS["tau"][3]}),
        }}

    def sweep(self, model, vae, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, trigger,
              betas, strengths, tau):
        stack = concept_stack(model)
        if stack is None:
            raise ConceptError("Gate Sweep: this model has no Perfusion concept; connect the MODEL output of "
                               "'Load Rank-1 Concept' to it")
        beta_values = parse_values(betas, "Gate Sweep: betas", *SLIDERS["beta"][:2])
        strength_values = parse_values(strengths, "Gate Sweep: strengths", *SLIDERS["strength"][:2])
        if len(beta_values) * len(strength_values) > 36:
            raise ConceptError(f"Gate Sweep: {len(beta_values)} x {len(strength_values)} cells; at most 36")
        current = next(iter(gate_settings(model).values()), GateSettings())
        latent = dict(latent_image, samples=latent_image["samples"][:1])
        rows = []
        for strength in strength_values:
            row = []
            for beta in beta_values:
                settings = replace(current, strength=strength, beta=beta, tau=tau)
                patched = set_gate(model, trigger, settings)
                samples = comfy_nodes.common_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive,
                                                      negative, latent)[0]["samples"]
                row.append(vae.decode(samples)[0].float())
            rows.append(row)
        title = f"trigger: {trigger.strip() or ', '.join(stack.triggers)} · tau {tau:g} · seed {seed}"
        grid = labelled_grid(rows, [f"strength {s:g}" if len(strength_values) > 1 else "" for s in strength_values],
                             [f"beta {b:g}" for b in beta_values], title)
        return (grid,)
