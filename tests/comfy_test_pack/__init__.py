"""Test-only ComfyUI node pack: loaders that build tiny random models in process.

The server test loads it next to the Perfusion pack and puts it in place of CheckpointLoaderSimple and
CLIPVisionLoader, so the example workflows run end to end without real weights.
"""

import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
if TESTS not in sys.path:
    sys.path.append(TESTS)

import tiny_models  # noqa: E402

_CACHE = {}


class PerfusionTestTinyCheckpoint:
    CATEGORY = "perfusion/testing"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (["sd1", "sdxl"],)}}

    def load(self, family):
        if family not in _CACHE:
            _CACHE[family] = (tiny_models.tiny_model(family), tiny_models.tiny_clip(family), tiny_models.tiny_vae())
        return _CACHE[family]


class PerfusionTestTinyClipVision:
    """tiny_models.tiny_clip_vision(): the widths subject_factory's adapters are made for."""
    CATEGORY = "perfusion/testing"
    FUNCTION = "load"
    RETURN_TYPES = ("CLIP_VISION",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        if "clip_vision" not in _CACHE:
            _CACHE["clip_vision"] = tiny_models.tiny_clip_vision()
        return (_CACHE["clip_vision"],)


NODE_CLASS_MAPPINGS = {"PerfusionTest_TinyCheckpoint": PerfusionTestTinyCheckpoint,
                       "PerfusionTest_TinyClipVision": PerfusionTestTinyClipVision}
