"""A checkpoint's model family from its safetensors header alone (no tensor is read), so the UI can
flag a concept made for another family before anything is queued."""

from __future__ import annotations

import json
import struct

# The first cross-attention to_k of each family, as stored in a full checkpoint: [inner, context].
_PROBES = (
    ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", {768: "sd1", 1024: "sd2"}),
    ("model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", {2048: "sdxl"}),
)


def read_header(path: str) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100 * 1024 * 1024:
            raise ValueError("header too large")
        return json.loads(f.read(n))


def family_of_header(header: dict) -> tuple:
    """("sd1" | "sd2" | "sdxl" | None, context width or None)."""
    for key, families in _PROBES:
        entry = header.get(key)
        if isinstance(entry, dict) and len(entry.get("shape", ())) == 2:
            context = entry["shape"][1]
            if context in families:
                return families[context], context
    return None, None
