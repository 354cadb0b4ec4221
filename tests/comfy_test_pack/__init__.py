"""Test-only ComfyUI node pack: a checkpoint loader that builds tiny random models in process.

The server test loads it next to the Perfusion pack and puts it in place of CheckpointLoaderSimple,
so the example workflows run end to end without real weights.
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


NODE_CLASS_MAPPINGS = {"PerfusionTest_TinyCheckpoint": PerfusionTestTinyCheckpoint}
