"""Which cross-attention layer is which: ComfyUI's patch keys and IP-Adapter's layer numbers.

ComfyUI calls an attn2 replace patch with the key ``(block, block_id, transformer_index)``, e.g.
``("input", 1, 0)``, ``("middle", 0, 0)``, ``("output", 3, 0)`` (attention.py BasicTransformerBlock;
the middle block is ``("middle", 0)``, openaimodel.py; a popular pack registers ``("middle", 1)``
and never reaches it). IP-Adapter numbers its layers as diffusers registers the attention processors:
input (down) blocks, then output (up) blocks, then the middle block, attn1 at even numbers and
attn2 at odd ones, so the n-th cross-attention layer in that order is ``2n + 1``.
"""

from __future__ import annotations

import re

LayerKey = tuple  # (block: "input" | "middle" | "output", block_id: int, transformer_index: int)

_PATH = re.compile(r"^(?:(input_blocks|output_blocks)\.(\d+)|(middle_block))\.\d+\.transformer_blocks\.(\d+)\.attn2$")
_BLOCK = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
_IP_ORDER = {"input": 0, "output": 1, "middle": 2}


def layer_key(path: str) -> LayerKey:
    """``input_blocks.4.1.transformer_blocks.1.attn2`` -> ("input", 4, 1);
    ``middle_block.1.transformer_blocks.0.attn2`` -> ("middle", 0, 0)."""
    m = _PATH.match(path)
    if m is None:
        raise ValueError(f"not a UNet cross-attention path: {path!r}")
    if m.group(3):
        return ("middle", 0, int(m.group(4)))
    return (_BLOCK[m.group(1)], int(m.group(2)), int(m.group(4)))


def block_path(path: str) -> str:
    """The transformer block that owns an attn2 path (``...transformer_blocks.0``)."""
    return path[: -len(".attn2")]


def ip_order(keys) -> list:
    """Keys in IP-Adapter order: input, output, middle; within each, by block id then index."""
    return sorted(keys, key=lambda k: (_IP_ORDER[k[0]], k[1], k[2]))


def ip_layer_numbers(keys) -> dict:
    """{layer key: IP-Adapter layer number 2n+1} (the number in ``"{n}.to_k_ip.weight"``)."""
    return {key: 2 * n + 1 for n, key in enumerate(ip_order(keys))}
