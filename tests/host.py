"""Host-test support: the real ComfyUI from $COMFYUI_PATH, tiny SD1.5- / SDXL-shaped models with random
weights built in ComfyUI's own classes, and concept files made for them.

Importing this module skips the importing test module, visibly, when COMFYUI_PATH is not set.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
if not COMFYUI_PATH or not os.path.isfile(os.path.join(COMFYUI_PATH, "comfy", "model_patcher.py")):
    pytest.skip("host test: set COMFYUI_PATH to a ComfyUI folder (with main.py and comfy/; see tests/run.sh)",
                allow_module_level=True)

# ComfyUI first on sys.path: its top-level `nodes` module must win over this pack's `nodes/` package.
if sys.path[0] != COMFYUI_PATH:
    sys.path.insert(0, COMFYUI_PATH)
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing(False)
from comfy.cli_args import args  # noqa: E402

# The device the host tests run on: the CPU (--cpu) unless PERFUSION_TEST_DEVICE=cuda (the GPU machine's
# device check, scripts/device-check.sh). PERFUSION_TEST_VRAM: one of ComfyUI's memory modes (lowvram,
# highvram, novram, normalvram), for this process and the servers the tests start.
DEVICE = os.environ.get("PERFUSION_TEST_DEVICE", "cpu")
VRAM = os.environ.get("PERFUSION_TEST_VRAM", "")
if DEVICE not in ("cpu", "cuda") or VRAM not in ("", "lowvram", "highvram", "novram", "normalvram"):
    raise SystemExit(f"PERFUSION_TEST_DEVICE={DEVICE!r} (cpu or cuda), PERFUSION_TEST_VRAM={VRAM!r} "
                     "(lowvram, highvram, novram, normalvram or empty)")
args.cpu = DEVICE == "cpu"
if VRAM:
    setattr(args, VRAM, True)
SERVER_FLAGS = (["--cpu"] if DEVICE == "cpu" else []) + ([f"--{VRAM}"] if VRAM else [])
import torch  # noqa: E402
import comfy.model_management  # noqa: E402
import folder_paths  # noqa: E402

# Nothing is written into the ComfyUI checkout: nodes run in this process (PreviewImage's loss curves,
# SaveImage) write to ComfyUI's temp/ and output/ folders unless told otherwise, so those go to a scratch
# folder of this test run. Model folders are set per test.
_SCRATCH = tempfile.mkdtemp(prefix="perfusion-host-")
for _setter, _name in ((folder_paths.set_temp_directory, "temp"), (folder_paths.set_output_directory, "output"),
                       (folder_paths.set_input_directory, "input"), (folder_paths.set_user_directory, "user")):
    os.makedirs(os.path.join(_SCRATCH, _name))
    _setter(os.path.join(_SCRATCH, _name))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)

from pack_loader import load_pack  # noqa: E402,F401
from tiny_models import (SD15_CONTEXT, SD2_CONTEXT, SDXL_G, SDXL_L, SDXL_POOLED, init_random_, tiny_clip,  # noqa: E402,F401
                         tiny_clip_vision,
                         tiny_model, tiny_vae)


def tower_widths(clip):
    model = clip.cond_stage_model
    return {t: getattr(model, t).transformer.get_input_embeddings().weight.shape[-1]
            for t in ("clip_l", "clip_g", "clip_h") if getattr(model, t, None) is not None}


def concept_for(pack, model, clip, trigger="sks", superclass="dog", seed=0, covariance=None, **overrides):
    """A random concept with exactly this model's layers and this CLIP's towers."""
    from concept_factory import make_concept
    family, _ = pack.nodes.model_patch.model_family(model)
    layers = [(p, m.to_v.out_features) for p, m in pack.nodes.model_patch.cross_attention_layers(model).items()]
    return make_concept(pack.core.concept_file.Concept, layers, tower_widths(clip), trigger=trigger,
                        superclass=superclass, model=family, seed=seed, covariance=covariance,
                        name=f"{trigger}.safetensors", **overrides)


def unet_output(model, context, x=None, sigma=1.0, seed=0, **extra):
    """One denoiser call through BaseModel.apply_model with the patcher's wrappers merged, as a sampler does."""
    import copy
    import comfy.sampler_helpers
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(context.shape[0], 4, 8, 8, generator=g) if x is None else x
    comfy.model_management.load_models_gpu([model])
    options = copy.deepcopy(model.model_options)
    options.setdefault("transformer_options", {})
    comfy.sampler_helpers.prepare_model_patcher(model, {}, options)
    device = model.load_device          # the CPU here; the GPU under PERFUSION_TEST_DEVICE=cuda
    extra = {k: v.to(device) if torch.is_tensor(v) else v for k, v in extra.items()}
    with torch.inference_mode():
        out = model.model.apply_model(x.to(device), torch.full((x.shape[0],), sigma, device=device),
                                      c_crossattn=context.to(device), transformer_options=options["transformer_options"],
                                      **extra)
    return out.cpu()


def cancel_at_step(step, seen):
    """Context manager: presses Cancel when a progress bar reaches ``step`` (records every value in
    ``seen``); expects the interrupt to stop the work, and clears the flag afterwards."""
    import contextlib
    import comfy.utils

    @contextlib.contextmanager
    def manager():
        def hook(value, total, preview, node_id=None):
            seen.append(value)
            if value == step:
                comfy.model_management.interrupt_current_processing(True)
        comfy.utils.set_progress_bar_global_hook(hook)
        try:
            with pytest.raises(comfy.model_management.InterruptProcessingException):
                yield
        finally:
            comfy.utils.set_progress_bar_global_hook(None)
            comfy.model_management.interrupt_current_processing(False)
    return manager()


def state_hash(module):
    """SHA-256 of a module's state dict (names and values): equal hashes, bit-identical weights."""
    import hashlib
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
