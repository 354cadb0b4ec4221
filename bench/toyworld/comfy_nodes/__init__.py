"""ComfyUI nodes for the toy world (loaded only by the toy-world demo and tests, never with the pack):
"Load Toy World Model" gives the pretrained toy model as MODEL / CLIP / VAE, "Toy World Reference
Images" a concept's 5 reference images."""

import os
import sys

# realpath: the demo links this folder into a scratch custom_nodes/
BENCH = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from toyworld import model as toy  # noqa: E402
from toyworld import world  # noqa: E402

_loaded = {}


class ToyWorldModel:
    DESCRIPTION = "The toy world's pretrained text-to-image model (SD1.5 block layout, 64x64 images, v-prediction)."
    CATEGORY = "perfusion/toy world"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The UNet.", "The text encoder (SD1 tokenizer).", "The VAE (8x down, 4 channels).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        if "models" not in _loaded:
            _loaded["models"] = toy.load()
        return _loaded["models"]


class ToyWorldReferences:
    DESCRIPTION = "A toy-world concept's 5 reference images (held out of pretraining), as an IMAGE batch."
    CATEGORY = "perfusion/toy world"
    FUNCTION = "images"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "superclass")
    OUTPUT_TOOLTIPS = ("5 images of 64x64.", "The concept's one-token superclass word.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"concept": ([c.name for c in world.ALL_CONCEPTS], {"tooltip": "The concept."})}}

    def images(self, concept):
        import torch
        c = next(k for k in world.ALL_CONCEPTS if k.name == concept)
        return (torch.from_numpy(world.references(c)), c.superclass)


NODE_CLASS_MAPPINGS = {"ToyWorldModel": ToyWorldModel, "ToyWorldReferences": ToyWorldReferences}
NODE_DISPLAY_NAME_MAPPINGS = {"ToyWorldModel": "Load Toy World Model", "ToyWorldReferences": "Toy World Reference Images"}
