"""ComfyUI node classes of the pack (thin: the math and file format live in core/)."""

from . import model_folder
from .gate_strength import PerfusionGateStrength
from .load_concept import PerfusionLoadConcept

model_folder.register()

NODE_CLASS_MAPPINGS = {
    "PerfusionLoadConcept": PerfusionLoadConcept,
    "PerfusionGateStrength": PerfusionGateStrength,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PerfusionLoadConcept": "Load Rank-1 Concept",
    "PerfusionGateStrength": "Gate Strength",
}
