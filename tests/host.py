"""Host-test support: the real ComfyUI from $COMFYUI_PATH, tiny SD1.5- / SDXL-shaped models with random
weights built in ComfyUI's own classes, and concept files made for them.

Importing this module skips the importing test module, visibly, when COMFYUI_PATH is not set.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
if not COMFYUI_PATH or not os.path.isfile(os.path.join(COMFYUI_PATH, "comfy", "model_patcher.py")):
    pytest.skip("host test: set COMFYUI_PATH to a ComfyUI checkout (see ../shared/docs/HOST.md)",
                allow_module_level=True)

# ComfyUI first on sys.path: its top-level `nodes` module must win over this pack's `nodes/` package.
if sys.path[0] != COMFYUI_PATH:
    sys.path.insert(0, COMFYUI_PATH)
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing(False)
from comfy.cli_args import args  # noqa: E402

args.cpu = True
import torch  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.sd1_clip  # noqa: E402
import comfy.sdxl_clip  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.supported_models_base  # noqa: E402
import folder_paths  # noqa: E402

PACK_NAME = "comfyui_perfusion_under_test"


def load_pack():
    """This repository imported as a package, the way ComfyUI imports a custom node folder."""
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, os.path.join(ROOT, "__init__.py"),
                                                      submodule_search_locations=[ROOT])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK_NAME]


def init_random_(module, seed=0, std=0.02):
    """ComfyUI's layers skip weight init: fill them from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


SD15_CONTEXT = 64
SDXL_L, SDXL_G = 32, 48
SDXL_POOLED = SDXL_G      # pooled output width of the tiny clip_g


def sd15_unet_config(context_dim=SD15_CONTEXT, model_channels=32):
    # SD1.5's block layout (16 attn2 layers at the real paths), small channels.
    return {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": model_channels,
            "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
            "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
            "context_dim": context_dim, "num_heads": 4, "num_head_channels": -1,
            "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            "use_temporal_attention": False, "use_temporal_resblock": False}


def sdxl_unet_config():
    # SDXL's layout (input 4,5 / 7,8, middle, output 0-5) with the 10-deep stacks shrunk to 2 and 3.
    return {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "num_classes": "sequential", "adm_in_channels": SDXL_POOLED + 6 * 256,
            "in_channels": 4, "model_channels": 32, "num_res_blocks": [2, 2, 2],
            "transformer_depth": [0, 0, 2, 2, 3, 3], "channel_mult": [1, 2, 4],
            "transformer_depth_middle": 3, "use_linear_in_transformer": True, "context_dim": SDXL_L + SDXL_G,
            "num_head_channels": 16, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 3, 3, 3],
            "use_temporal_attention": False, "use_temporal_resblock": False}


def _patcher(model):
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def tiny_model(family="sd1", seed=0):
    if family == "sd1":
        config = comfy.supported_models.SD15(sd15_unet_config())
        config.unet_config.update({"num_heads": 4, "num_head_channels": -1})   # BASE re-applies SD15's 8 heads
    else:
        config = comfy.supported_models.SDXL(sdxl_unet_config())
        config.unet_config.update({"num_head_channels": 16})
    model = config.get_model({}, device=comfy.model_management.unet_offload_device())
    init_random_(model.diffusion_model, seed)
    return _patcher(model)


def _tower(hidden, layers=3, **extra):
    return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
            "num_attention_heads": 2, **extra}


def tiny_clip(family="sd1", seed=0):
    if family == "sd1":
        target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
        options = {"clip_l_model_config": _tower(SD15_CONTEXT)}
    else:
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        options = {"clip_l_model_config": _tower(SDXL_L),
                   "clip_g_model_config": _tower(SDXL_G)}
    clip = comfy.sd.CLIP(target, model_options=options)
    init_random_(clip.cond_stage_model, seed + 1)
    return clip


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
    with torch.inference_mode():
        return model.model.apply_model(x, torch.full((x.shape[0],), sigma), c_crossattn=context,
                                       transformer_options=options["transformer_options"], **extra)
