"""ComfyUI-Perfusion: personalised subjects in Stable Diffusion with tiny concept files.

ComfyUI imports this package from custom_nodes/; the nodes are in nodes/, the math in core/.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
