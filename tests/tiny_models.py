"""Tiny SD1.5- and SDXL-shaped models with random weights, built in ComfyUI's own classes.

Needs ComfyUI importable (host tests, and the test node pack that the server loads); no pytest.
"""

from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.sd2_clip


def init_random_(module, seed=0, std=0.02, fan_in=False):
    """ComfyUI's layers skip weight init: fill them from a seeded generator. Norm scales and biases are
    random too, as in a trained model (with zero biases, a final LayerNorm would put every text
    encoding in one hyperplane and make the encodings' second moment singular)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "norm" in name else std))
            else:
                scale = (p[0].numel() ** -0.5) if fan_in and p.ndim >= 2 else std
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


SD15_CONTEXT = 64
SD2_CONTEXT = 56
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


def tiny_model(family="sd1", seed=0, fan_in=False, dtype=None):
    """``fan_in``: weights scaled by 1/sqrt(fan in), so activations keep their size and the output
    depends on the context as in a trained model (what a learning test needs)."""
    if family == "sd1":
        config = comfy.supported_models.SD15(sd15_unet_config())
        config.unet_config.update({"num_heads": 4, "num_head_channels": -1})   # BASE re-applies SD15's 8 heads
    elif family == "sd2":
        config = comfy.supported_models.SD20({**sd15_unet_config(context_dim=SD2_CONTEXT), "use_linear_in_transformer": True})
        config.unet_config.update({"num_heads": -1, "num_head_channels": 16})
    else:
        config = comfy.supported_models.SDXL(sdxl_unet_config())
        config.unet_config.update({"num_head_channels": 16})
    if dtype is not None:
        config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=comfy.model_management.unet_offload_device())
    init_random_(model.diffusion_model, seed, fan_in=fan_in)
    return _patcher(model)


def _tower(hidden, layers=3, **extra):
    return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
            "num_attention_heads": 2, **extra}


def tiny_clip(family="sd1", seed=0):
    if family == "sd1":
        target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
        options = {"clip_l_model_config": _tower(SD15_CONTEXT)}
    elif family == "sd2":
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.sd2_clip.SD2Tokenizer,
                                                        comfy.text_encoders.sd2_clip.SD2ClipModel)
        options = {"clip_h_model_config": _tower(SD2_CONTEXT)}
    else:
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        options = {"clip_l_model_config": _tower(SDXL_L),
                   "clip_g_model_config": _tower(SDXL_G)}
    clip = comfy.sd.CLIP(target, model_options=options)
    init_random_(clip.cond_stage_model, seed + 1)
    return clip


def tiny_vae(seed=0):
    """An SD-style AutoencoderKL (8x down, 4 latent channels) with 32 channels everywhere."""
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    vae = comfy.sd.VAE(sd={}, config={"params": {"ddconfig": ddconfig, "embed_dim": 4}})
    init_random_(vae.first_stage_model, seed + 2)
    return vae


VISION_WIDTH, VISION_PROJ, VISION_IMAGE, VISION_PATCH = 64, 32, 56, 14     # 16 patch tokens + CLS


def clip_vision_from_config(config: dict, seed=0):
    """ComfyUI's ClipVisionModel (it reads its config from a JSON file) with random weights."""
    import json
    import os
    import tempfile
    import comfy.clip_vision
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    try:
        vision = comfy.clip_vision.ClipVisionModel(path)
    finally:
        os.unlink(path)
    init_random_(vision.model, seed + 3, fan_in=True)
    return vision


def tiny_clip_vision(seed=0, width=VISION_WIDTH, projection=VISION_PROJ):
    """A ViT CLIP-vision model (ComfyUI's ClipVisionModel) with a tiny config and random weights."""
    return clip_vision_from_config(
        {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": width,
         "image_size": VISION_IMAGE, "intermediate_size": 2 * width, "layer_norm_eps": 1e-05,
         "model_type": "clip_vision_model", "num_attention_heads": 4, "num_channels": 3,
         "num_hidden_layers": 3, "patch_size": VISION_PATCH, "projection_dim": projection}, seed)
