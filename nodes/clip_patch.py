"""Gives a CLIP clone the concepts' trigger words (learned embedding + superclass prompt version)."""

from __future__ import annotations

import torch

import comfy.conds

from ..core.clip_layer import concept_layer, layer_for, layer_mismatch
from ..core.concept_stack import SUPER_CONTEXT_KEY
from ..core.concept_text import ConceptTextEncoder, ConceptTokenizer
from ..core.errors import ConceptError


def _tower_widths(clip) -> dict:
    """{"clip_l": 768, ...}: the width of each text tower's token embedding."""
    model = getattr(clip.cond_stage_model, "inner", clip.cond_stage_model)
    widths = {}
    for tower in ("clip_l", "clip_g", "clip_h"):
        sub = getattr(model, tower, None)
        if sub is not None:
            widths[tower] = sub.transformer.get_input_embeddings().weight.shape[-1]
    return widths


def add_concept_to_clip(clip, concept):
    """A clone of ``clip`` whose tokenizer turns ``concept.trigger`` into its learned embedding."""
    widths = _tower_widths(clip)
    for tower, width in widths.items():
        vector = concept.embeddings.get(tower)
        if vector is not None and vector.shape[0] != width:
            raise ConceptError(f"{concept.label}: embedding.{tower} has {vector.shape[0]} values; this CLIP's "
                               f"{tower} has {width}. It was made for another model family ({concept.model})")
    trained, used = concept_layer(concept), layer_for(clip.cond_stage_model, clip.layer_idx)
    if trained != used:
        raise ConceptError(layer_mismatch(concept.label, trained, used))
    previous = clip.tokenizer.concepts if isinstance(clip.tokenizer, ConceptTokenizer) else ()
    entry = (concept.trigger, concept.superclass, concept.embeddings, concept.label)
    tokenizer = ConceptTokenizer(clip.tokenizer, previous + (entry,))
    layers = clip.cond_stage_model.layers if isinstance(clip.cond_stage_model, ConceptTextEncoder) else ()
    encoder = ConceptTextEncoder(clip.cond_stage_model, tokenizer.superclass_ids, SUPER_CONTEXT_KEY,
                                 comfy.conds.CONDCrossAttn, layers + ((concept.label, trained),))
    patched = clip.clone()
    patched.tokenizer = tokenizer
    patched.cond_stage_model = encoder
    return patched


def encode_prompts(clip, tokens, per_prompt_pooled=False):
    """A batch of one-chunk prompts: ([B, 77, D], pooled). In one text-encoder forward, whose pooled
    output is the first prompt's; with ``per_prompt_pooled`` (SDXL's ADM needs it) one forward each."""
    if per_prompt_pooled:
        outs = [clip.encode_from_tokens(tok, return_pooled=True) for tok in tokens]
        return torch.cat([c for c, _ in outs]), torch.cat([p for _, p in outs])
    batch = {}
    for tok in tokens:
        for key, sections in tok.items():
            batch.setdefault(key, []).append(sections[0])
    cond, pooled = clip.encode_from_tokens(batch, return_pooled=True)
    return cond.reshape(len(tokens), -1, cond.shape[-1]), pooled
