"""ComfyUI node classes of the pack (thin: the math and file format live in core/)."""

from . import model_folder
from .gate_strength import PerfusionGateStrength
from .load_concept import PerfusionLoadConcept
from .train_concept import PerfusionTrainConcept

model_folder.register()

NODE_CLASS_MAPPINGS = {
    "PerfusionLoadConcept": PerfusionLoadConcept,
    "PerfusionGateStrength": PerfusionGateStrength,
    "PerfusionTrainConcept": PerfusionTrainConcept,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PerfusionLoadConcept": "Load Rank-1 Concept",
    "PerfusionGateStrength": "Gate Strength",
    "PerfusionTrainConcept": "Train Perfusion Concept",
}
