"""ComfyUI node classes of the pack (thin: the math and file format live in core/)."""

from . import model_folder, routes, subject_adapter
from .gate_strength import PerfusionGateStrength
from .gate_sweep import PerfusionGateSweep
from .load_concept import PerfusionLoadConcept
from .subject_nodes import (SubjectReferenceApply, SubjectReferenceEncoder, SubjectReferenceLoader,
                            SubjectReferenceTextEncode)
from .subject_train import SubjectReferenceTrain
from .train_concept import PerfusionTrainConcept

model_folder.register()
subject_adapter.register()
routes.register()

NODE_CLASS_MAPPINGS = {
    "PerfusionLoadConcept": PerfusionLoadConcept,
    "PerfusionGateStrength": PerfusionGateStrength,
    "PerfusionTrainConcept": PerfusionTrainConcept,
    "PerfusionGateSweep": PerfusionGateSweep,
    "SubjectReferenceLoader": SubjectReferenceLoader,
    "SubjectReferenceEncoder": SubjectReferenceEncoder,
    "SubjectReferenceApply": SubjectReferenceApply,
    "SubjectReferenceTextEncode": SubjectReferenceTextEncode,
    "SubjectReferenceTrain": SubjectReferenceTrain,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PerfusionLoadConcept": "Load Rank-1 Concept",
    "PerfusionGateStrength": "Gate Strength",
    "PerfusionTrainConcept": "Train Perfusion Concept",
    "PerfusionGateSweep": "Gate Sweep",
    "SubjectReferenceLoader": "Load Subject Adapter",
    "SubjectReferenceEncoder": "Subject Reference Encoder",
    "SubjectReferenceApply": "Apply Subject Reference",
    "SubjectReferenceTextEncode": "Subject Reference Text Encode",
    "SubjectReferenceTrain": "Train Subject Adapter",
}
