"""The toy world's text-to-image model in ComfyUI's own classes, so the pack's code runs on it unchanged:
a ``UNetModel`` in SD1.5's block layout (the 16 cross-attention layers at SD1.5's paths) with small
channels, an ``SD1ClipModel`` with a small config and the real SD1 tokenizer, and an ``AutoencoderKL``
``VAE`` (8x down as SD's, 16 latent channels); wrapped as ModelPatcher / CLIP / VAE.

The model is v-prediction on SD's noise schedule rescaled to zero terminal SNR (ComfyUI's ``zsnr``), so
background colours, the largest feature of this world, come out right from pure noise.

The bundle file (safetensors) holds the three models' weights under ``unet.``, ``clip.`` and ``vae.``
and the configs as metadata. The text encoder's token table is stored only for the rows pretraining
used (the world's words); the others are regenerated from a fixed seed, which keeps the file small.
Needs ComfyUI importable.
"""

from __future__ import annotations

import json
import math
import os

import torch
from safetensors.torch import load_file, save_file

import comfy.latent_formats
import comfy.ldm.models.autoencoder
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base

HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLE = os.path.join(HERE, "model", "toyworld-v1.safetensors")
FORMAT = "toyworld.v1"
CONTEXT = 64

LATENT_CHANNELS = 16
UNET_CONFIG = {"use_checkpoint": False, "image_size": 8, "out_channels": LATENT_CHANNELS, "use_spatial_transformer": True,
               "legacy": False, "adm_in_channels": None, "in_channels": LATENT_CHANNELS, "model_channels": 32,
               "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
               "channel_mult": [1, 2, 3, 3], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
               "context_dim": CONTEXT, "num_heads": 4, "num_head_channels": -1,
               "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
               "use_temporal_attention": False, "use_temporal_resblock": False}
CLIP_CONFIG = {"hidden_size": CONTEXT, "intermediate_size": 4 * CONTEXT, "num_hidden_layers": 3,
               "num_attention_heads": 4}
VAE_CONFIG = {"double_z": True, "z_channels": LATENT_CHANNELS, "resolution": 64, "in_channels": 3, "out_ch": 3,
              "ch": 32, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
TOKEN_TABLE = "clip.clip_l.transformer.text_model.embeddings.token_embedding.weight"
INIT_SEED = 1234


class ToyWorldLatent(comfy.latent_formats.LatentFormat):
    """16 channels at 8x down (4 were too few for this small VAE to learn crisp shapes in minutes); the
    VAE's latents are normalised to unit variance, so process_in is the identity. KSampler widens
    EmptyLatentImage's 4-channel zeros to 16 itself (comfy.sample.fix_empty_latent_channels)."""
    latent_channels = LATENT_CHANNELS
    scale_factor = 1.0


def _patcher(model):
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def build_unet():
    config = comfy.supported_models.SD15(dict(UNET_CONFIG))
    config.unet_config.update({"num_heads": 4, "num_head_channels": -1})    # SD15 re-applies its 8 heads
    config.sampling_settings = {"zsnr": True}
    config.latent_format = ToyWorldLatent()
    model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION,
                                       device=comfy.model_management.unet_offload_device())
    return _patcher(model)


def build_clip():
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    # fp32: ComfyUI would pick fp16 for a text encoder on CPU; this one is small and trains in fp32
    return comfy.sd.CLIP(target, model_options={"clip_l_model_config": dict(CLIP_CONFIG), "dtype": torch.float32})


def build_vae():
    params = {"ddconfig": dict(VAE_CONFIG), "embed_dim": LATENT_CHANNELS}
    # ComfyUI warns of every key missing from an empty state dict; init_ or load() sets the weights after
    keys = comfy.ldm.models.autoencoder.AutoencoderKL(**params).state_dict()
    vae = comfy.sd.VAE(sd=keys, config={"params": params})
    vae.latent_channels = LATENT_CHANNELS          # ComfyUI assumes SD's 4 for a VAE built from a config
    return vae


def init_(module, seed):
    """ComfyUI's layers skip initialisation: PyTorch's default init from a seeded generator (by module
    type: norms at 1 / 0, embeddings N(0, 0.02)), and the UNet's output convolution at zero (as in latent
    diffusion)."""
    g = torch.Generator().manual_seed(seed)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for sub in module.modules():
            own = dict(sub.named_parameters(recurse=False))
            if not own:
                continue
            if isinstance(sub, norms):
                for name, p in own.items():
                    p.fill_(1.0 if name == "weight" else 0.0)
            elif isinstance(sub, torch.nn.Embedding):
                own["weight"].copy_(torch.randn(own["weight"].shape, generator=g) * 0.02)
            else:
                for name, p in own.items():
                    if p.ndim >= 2:
                        bound = 1.0 / math.sqrt(p[0].numel())
                        p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
                    else:
                        p.zero_()
        out = getattr(module, "out", None)
        if out is not None:
            for p in out[-1].parameters():
                p.zero_()
    return module


def fresh(seed=INIT_SEED):
    """The untrained model: (ModelPatcher, CLIP, VAE), deterministic for a seed."""
    unet, clip, vae = build_unet(), build_clip(), build_vae()
    init_(unet.model.diffusion_model, seed)
    init_(clip.cond_stage_model, seed + 1)
    init_(vae.first_stage_model, seed + 2)
    return unet, clip, vae


def state(unet, clip, vae, used_tokens=None) -> dict:
    tensors = {}
    for prefix, module in (("unet.", unet.model.diffusion_model), ("clip.", clip.cond_stage_model),
                           ("vae.", vae.first_stage_model)):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().cpu().contiguous()
    if used_tokens is not None:
        table = tensors.pop(TOKEN_TABLE)
        ids = torch.tensor(sorted(set(int(i) for i in used_tokens)), dtype=torch.int64)
        tensors["clip.used_token_ids"] = ids
        tensors["clip.used_token_rows"] = table[ids].contiguous()
    return tensors


def save(path, unet, clip, vae, used_tokens, info: dict, dtype=torch.float16):
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state(unet, clip, vae, used_tokens).items()}
    metadata = {"format": FORMAT, "unet": json.dumps(UNET_CONFIG), "clip": json.dumps(CLIP_CONFIG),
                "vae": json.dumps(VAE_CONFIG), "init_seed": str(INIT_SEED),
                **{k: str(v) for k, v in info.items()}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def read_info(path=BUNDLE) -> dict:
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        return dict(f.metadata() or {})


def load(path=BUNDLE):
    """(ModelPatcher, CLIP, VAE) from a bundle, weights in fp32."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: run `python -m toyworld.pretrain` in bench/ "
                                "(see bench/toyworld/README.md)")
    info = read_info(path)
    if info.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} bundle (format {info.get('format')!r})")
    tensors = load_file(path)
    unet, clip, vae = fresh(int(info.get("init_seed", INIT_SEED)))     # the token rows pretraining never used
    ids, rows = tensors.pop("clip.used_token_ids", None), tensors.pop("clip.used_token_rows", None)
    table = clip.cond_stage_model.state_dict()[TOKEN_TABLE[len("clip."):]].clone()
    if ids is not None:
        table[ids] = rows.float()
    tensors[TOKEN_TABLE] = table
    for prefix, module in (("unet.", unet.model.diffusion_model), ("clip.", clip.cond_stage_model),
                           ("vae.", vae.first_stage_model)):
        part = {k[len(prefix):]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(part, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"{path}: {prefix[:-1]} weights do not match the model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return unet, clip, vae
