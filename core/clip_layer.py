"""Which text-encoder layer a CLIP's encodings come from (CLIPSetLastLayer), as one short name.

A concept's i*, G i* and superclass encoding are encodings at one layer, so a concept records the
layer it was trained at and refuses another. Duck-typed over ComfyUI's ``SDClipModel`` towers
(``layer``, ``layer_idx``, ``num_layers``, ``layer_norm_hidden_state``, ``options_default``).

Names: "last" (the final layer after the final layer norm, SD1.x's default and CLIPSetLastLayer -1
there), or "-2", "-3", ... (that layer's hidden state), so equal names mean equal encodings:
SD1's hidden -1 is normed and equals "last"; SDXL's is not normed and stays "-1".
"""

from __future__ import annotations

TOWERS = ("clip_l", "clip_g", "clip_h")
# A concept file without perfusion.clip_layer was trained at its family's default layer.
FAMILY_DEFAULT = {"sd1": "last", "sd2": "-2", "sdxl": "-2"}


def towers(text_model) -> list:
    """The SDClipModel towers of a cond_stage_model (wrappers with ``inner`` are unwrapped)."""
    while hasattr(text_model, "inner"):
        text_model = text_model.inner
    found = [getattr(text_model, t, None) for t in TOWERS]
    return [t for t in found if t is not None and hasattr(t, "num_layers")]


def _name(layer, layer_idx, num_layers, normed) -> str:
    if layer != "hidden" or layer_idx is None:
        return "last" if layer == "last" else str(layer)
    index = layer_idx if layer_idx < 0 else layer_idx - num_layers
    return "last" if index == -1 and normed else str(index)


def current_layer(text_model) -> str:
    """The layer the towers are set to right now (CLIP.encode_from_tokens has just set them)."""
    names = {_name(t.layer, t.layer_idx, t.num_layers, t.layer_norm_hidden_state) for t in towers(text_model)}
    return "/".join(sorted(names)) if names else "last"


def layer_for(text_model, layer_idx) -> str:
    """The layer CLIP.encode_from_tokens will use for ``clip.layer_idx`` (None: the towers' defaults),
    following SDClipModel.set_clip_options without changing anything."""
    names = set()
    for t in towers(text_model):
        layer, idx = t.options_default[:2]
        if layer_idx is not None and layer != "all":
            layer, idx = ("last", None) if abs(layer_idx) > t.num_layers else ("hidden", layer_idx)
        names.add(_name(layer, idx, t.num_layers, t.layer_norm_hidden_state))
    return "/".join(sorted(names)) if names else "last"


def describe(name: str) -> str:
    return "-1 (last)" if name == "last" else name


def concept_layer(concept) -> str:
    """The layer a concept was trained at (files made before the field: the family's default)."""
    return concept.info.get("perfusion.clip_layer") or FAMILY_DEFAULT.get(concept.model, "last")


def layer_mismatch(label: str, trained: str, used: str) -> str:
    to_set = "-1" if trained == "last" else trained
    return (f"{label} was trained at the text encoder's layer {describe(trained)}, but this CLIP encodes at layer "
            f"{describe(used)}; set 'CLIP Set Last Layer' to {to_set} on the CLIP before 'Load Rank-1 Concept' "
            "(or train the concept again at this layer)")
