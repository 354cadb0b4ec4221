"""Full-size single-file checkpoints with random weights, for the real-checkpoint host tests.

SD1.5 (860M UNet, CLIP-L text encoder, VAE) and SD2.1-768-v (865M UNet, OpenCLIP-H text encoder, VAE,
v-prediction as ComfyUI detects it from the file), each built from ComfyUI's own supported-model
config (comfy.supported_models.SD15 / SD20: get_model, clip_target) and comfy.sd.VAE, every weight
drawn from a seeded generator at trained-like scales, and written in float16 by ComfyUI's own
comfy.sd.save_checkpoint: the original key layout (model.diffusion_model.*, cond_stage_model.*,
first_stage_model.*) and exactly the tensors that function writes (an SD1.5 file carries no CLIP-L
text_projection, as a downloaded one). Each file is then checked: its keys, and ComfyUI's own
loader (comfy.sd.load_checkpoint_guess_config, what CheckpointLoaderSimple calls) detects the family
and reads back every saved weight.

Files are cached outside the repository and outside the ComfyUI checkout, in
$PERFUSION_TEST_CACHE or ~/.cache/comfyui-perfusion-tests/, in a folder named by BUILDER_VERSION
(bump it whenever what the builder writes changes): the build costs once per machine.

Run it as a subprocess, so the memory it builds in is freed before servers start:

    COMFYUI_PATH=/path/to/ComfyUI python tests/real_checkpoints.py sd15 sd2 [--sdxl-estimate]

It prints one JSON line per family (path, seconds, checks). Importing this module does not import
ComfyUI (the test module reads the paths and the space check from it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

BUILDER_VERSION = "1"
SEEDS = {"sd15": 1501, "sd2": 2101, "sdxl": 3001}
FILE_NAMES = {"sd15": "random-sd15.safetensors", "sd2": "random-sd21-768-v.safetensors",
              "sdxl": "random-sdxl.safetensors"}
# float16 file sizes (measured: sd15 2.13 GB, sd2 2.60 GB), plus the temporary file being written.
FILE_BYTES = {"sd15": 2_140_000_000, "sd2": 2_610_000_000, "sdxl": 6_940_000_000}
SPARE_BYTES = 1_000_000_000
# Peak memory of one build (float32 model + float16 copy + the loader's check), measured ~11 GB for sd2.
MEMORY_BYTES = {"sd15": 9_000_000_000, "sd2": 12_000_000_000}

# ComfyUI's reference UNet configs (comfy/model_detection.py, unet_config_from_diffusers_unet: SD15, SD21).
SD15_UNET = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
             'legacy': False, 'adm_in_channels': None, 'in_channels': 4, 'model_channels': 320,
             'num_res_blocks': [2, 2, 2, 2], 'transformer_depth': [1, 1, 1, 1, 1, 1, 0, 0],
             'channel_mult': [1, 2, 4, 4], 'transformer_depth_middle': 1, 'use_linear_in_transformer': False,
             'context_dim': 768, 'num_heads': 8, 'transformer_depth_output': [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             'use_temporal_attention': False, 'use_temporal_resblock': False}
SD21_UNET = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
             'legacy': False, 'adm_in_channels': None, 'in_channels': 4, 'model_channels': 320,
             'num_res_blocks': [2, 2, 2, 2], 'transformer_depth': [1, 1, 1, 1, 1, 1, 0, 0],
             'channel_mult': [1, 2, 4, 4], 'transformer_depth_middle': 1, 'use_linear_in_transformer': True,
             'context_dim': 1024, 'num_head_channels': 64,
             'transformer_depth_output': [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             'use_temporal_attention': False, 'use_temporal_resblock': False}
SDXL_UNET = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
             'legacy': False, 'num_classes': 'sequential', 'adm_in_channels': 2816, 'in_channels': 4,
             'model_channels': 320, 'num_res_blocks': [2, 2, 2], 'transformer_depth': [0, 0, 2, 2, 10, 10],
             'channel_mult': [1, 2, 4], 'transformer_depth_middle': 10, 'use_linear_in_transformer': True,
             'context_dim': 2048, 'num_head_channels': 64, 'transformer_depth_output': [0, 0, 0, 2, 2, 2, 10, 10, 10],
             'use_temporal_attention': False, 'use_temporal_resblock': False}
# The SD1.x / SD2.x VAE: comfy/sd.py's "default SD1.x/SD2.x VAE parameters".
VAE_DDCONFIG = {'double_z': True, 'z_channels': 4, 'resolution': 256, 'in_channels': 3, 'out_ch': 3, 'ch': 128,
                'ch_mult': [1, 2, 4, 4], 'num_res_blocks': 2, 'attn_resolutions': [], 'dropout': 0.0}

# Trained-like scales. Linear/conv weights: N(0, 1/fan_in) (activations keep their size through 25
# UNet blocks and 24 CLIP layers; attention logits vary by O(1), so the output depends on the
# prompt); biases N(0, 0.01^2); token/position embeddings N(0, 0.02^2 / 0.01^2) as in CLIP;
# LayerNorm/GroupNorm weights 1 + N(0, 0.05^2), biases N(0, 0.15^2). The norm-bias spread also
# makes ComfyUI read the SD2 file as 768-v: SD20.model_type calls a file v-prediction when
# output_blocks.11.1.transformer_blocks.0.norm1.bias has std > 0.09.
BIAS_STD, NORM_WEIGHT_STD, NORM_BIAS_STD = 0.01, 0.05, 0.15
TOKEN_EMBEDDING_STD, POSITION_EMBEDDING_STD = 0.02, 0.01


def cache_root() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("PERFUSION_TEST_CACHE")
                                              or "~/.cache/comfyui-perfusion-tests"))


def cache_dir() -> str:
    return os.path.join(cache_root(), f"real-checkpoints-v{BUILDER_VERSION}")


def checkpoint_path(family: str) -> str:
    return os.path.join(cache_dir(), FILE_NAMES[family])


def info_path(family: str) -> str:
    return checkpoint_path(family) + ".json"


def is_built(family: str) -> bool:
    """Built by this builder version and checked (the info file is written last)."""
    try:
        with open(info_path(family)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    return (info.get("builder_version") == BUILDER_VERSION and os.path.isfile(checkpoint_path(family))
            and os.path.getsize(checkpoint_path(family)) == info.get("bytes"))


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def refusal(families, comfyui_path: str = "") -> str | None:
    """Why the files cannot be built here (a reason to skip), or None."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = cache_root()
    for folder, what in ((repo, "this repository"), (comfyui_path, "the ComfyUI checkout")):
        if folder and _inside(root, folder):
            return f"the checkpoint cache {root} is inside {what}; set PERFUSION_TEST_CACHE to a folder outside it"
    missing = [f for f in families if not is_built(f)]
    if not missing:
        return None
    probe = root
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    need = sum(FILE_BYTES[f] for f in missing) + SPARE_BYTES
    if free < need:
        return (f"not enough disk space for the full-size random checkpoints ({', '.join(missing)}): "
                f"{need / 1e9:.1f} GB needed in {root}, {free / 1e9:.1f} GB free (set PERFUSION_TEST_CACHE)")
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        available = None
    need_memory = max(MEMORY_BYTES.get(f, 0) for f in missing)
    if available is not None and available < need_memory:
        return (f"not enough memory to build the full-size random checkpoints ({', '.join(missing)}): "
                f"{need_memory / 1e9:.0f} GB needed, {available / 1e9:.1f} GB available")
    return None


# ----------------------------------------------------------------------------------------------
# Everything below imports ComfyUI (run as a script with COMFYUI_PATH set).

def _bootstrap_comfy():
    comfy_path = os.environ.get("COMFYUI_PATH", "")
    if not os.path.isfile(os.path.join(comfy_path, "comfy", "model_patcher.py")):
        raise SystemExit("real_checkpoints.py: set COMFYUI_PATH to a ComfyUI checkout")
    if sys.path[0] != comfy_path:
        sys.path.insert(0, comfy_path)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args
    args.cpu = True


def init_trained_like_(module, generator):
    """Fills every parameter of ``module`` from ``generator`` (ComfyUI's layers leave them as
    torch.empty) at the scales above; returns the names of parameters left as constructed (only
    constants such as CLIP's logit_scale)."""
    import torch

    def normal(p, std):
        p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32) * std)

    done = set()
    with torch.no_grad():
        for _, m in module.named_modules():
            params = dict(m.named_parameters(recurse=False))
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                if "weight" in params:
                    params["weight"].copy_(1.0 + NORM_WEIGHT_STD * torch.randn(params["weight"].shape, generator=generator))
                if "bias" in params:
                    normal(params["bias"], NORM_BIAS_STD)
            elif isinstance(m, torch.nn.Embedding):
                normal(params["weight"], POSITION_EMBEDDING_STD if params["weight"].shape[0] <= 257 else TOKEN_EMBEDDING_STD)
            elif isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
                w = params["weight"]
                normal(w, w[0].numel() ** -0.5)
                if "bias" in params and params["bias"] is not None:
                    normal(params["bias"], BIAS_STD)
            else:
                continue
            done.update(id(p) for p in params.values() if p is not None)
        left = []
        for name, p in module.named_parameters():
            if id(p) in done:
                continue
            if name.endswith("logit_scale"):            # a constant (4.6055), not uninitialised memory
                left.append(name)
                continue
            normal(p, TOKEN_EMBEDDING_STD if p.ndim >= 2 else BIAS_STD)   # e.g. a bare nn.Parameter
            done.add(id(p))
    return left


def _config(family):
    import comfy.supported_models
    if family == "sd15":
        return comfy.supported_models.SD15(SD15_UNET)
    if family == "sd2":
        return comfy.supported_models.SD20(SD21_UNET)
    return comfy.supported_models.SDXL(SDXL_UNET)


def _build_models(family, dtype):
    import torch
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    g = torch.Generator().manual_seed(SEEDS[family])
    config = _config(family)
    config.set_inference_dtype(dtype, None)
    offload = comfy.model_management.unet_offload_device()
    base = config.get_model({}, device=offload)        # EPS here; the file's norm biases make SD2 768-v
    left = init_trained_like_(base.diffusion_model, g)
    model = comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                             offload_device=offload)
    clip = comfy.sd.CLIP(config.clip_target(), model_options={"dtype": dtype})
    left += init_trained_like_(clip.cond_stage_model, g)
    vae = comfy.sd.VAE(sd={}, config={"params": {"ddconfig": dict(VAE_DDCONFIG), "embed_dim": 4}}, dtype=dtype)
    left += init_trained_like_(vae.first_stage_model, g)
    return model, clip, vae, left


def _sanity(family, model, clip, vae):
    """Activations finite and not degenerate through the whole text encoder (both layer settings),
    the UNet (and its output depends on the prompt) and the VAE decoder, in float32."""
    import torch
    import comfy.model_management
    stats = {}
    contexts = []
    for text in ("a photo of a dog on the beach", "a red car in the snow at night"):
        for layer in (None, -2):
            c = clip.clone()
            if layer is not None:
                c.clip_layer(layer)
            cond, pooled = c.encode_from_tokens(c.tokenize(text), return_pooled=True)
            assert torch.isfinite(cond).all() and torch.isfinite(pooled).all(), (family, text, layer)
            spread = cond[0].float().std(0).mean().item()           # across tokens
            assert spread > 1e-3, f"{family}: text encodings do not vary across tokens ({spread})"
            stats[f"clip_layer_{layer or 'default'}_token_spread"] = round(spread, 4)
            if layer is None:
                contexts.append(cond)
    comfy.model_management.load_models_gpu([model])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 32, 32, generator=g)
    extra = {}
    if family == "sdxl":
        extra["y"] = torch.zeros(1, model.model.adm_channels)
    with torch.inference_mode():
        outs = [model.model.apply_model(x, torch.tensor([5.0]), c_crossattn=c, **extra).float() for c in contexts]
    for o in outs:
        assert torch.isfinite(o).all(), f"{family}: UNet output not finite"
    stats["unet_out_std"] = round(outs[0].std().item(), 4)
    stats["unet_prompt_effect"] = round(((outs[0] - outs[1]).norm() / outs[0].norm()).item(), 4)
    assert 1e-3 < stats["unet_out_std"] < 1e3, stats
    assert stats["unet_prompt_effect"] > 1e-3, f"{family}: the UNet output does not depend on the prompt {stats}"
    image = vae.decode(torch.randn(1, 4, 16, 16, generator=g))
    assert torch.isfinite(image).all()
    stats["vae_pixel_std"] = round(image.float().std().item(), 4)
    assert stats["vae_pixel_std"] > 0.01, f"{family}: the VAE decodes to a flat image {stats}"
    return stats


def _check_keys(family, path):
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
        dtypes = {str(f.get_slice(k).get_dtype()) for k in keys}
        metadata = f.metadata() or {}
    prefixes = {"model.diffusion_model.": 0, "cond_stage_model.": 0, "first_stage_model.": 0}
    stray = []
    for k in keys:
        p = next((p for p in prefixes if k.startswith(p)), None)
        if p is None:
            stray.append(k)
        else:
            prefixes[p] += 1
    assert not stray, f"{family}: keys outside a checkpoint's layout: {stray[:5]}"
    assert all(prefixes.values()), f"{family}: a part is missing: {prefixes}"
    clip_keys = [k for k in keys if k.startswith("cond_stage_model.")]
    if family == "sd15":
        assert all(k.startswith("cond_stage_model.transformer.text_model.") for k in clip_keys), clip_keys[:5]
        assert not any("text_projection" in k for k in keys), "an SD1.5 file has no CLIP-L text_projection"
        assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
        assert sum(".encoder.layers." in k and k.endswith("self_attn.q_proj.weight") for k in clip_keys) == 12
    elif family == "sd2":
        assert all(k.startswith("cond_stage_model.model.") for k in clip_keys), clip_keys[:5]
        assert sum(k.endswith("attn.in_proj_weight") for k in clip_keys) == 24          # OpenCLIP-H: 24 layers
        assert "cond_stage_model.model.ln_final.weight" in keys and "v_pred" not in keys
    assert dtypes == {"F16"}, f"{family}: expected a float16 file, found {sorted(dtypes)}"
    return {"keys": len(keys), "unet_keys": prefixes["model.diffusion_model."],
            "clip_keys": prefixes["cond_stage_model."], "vae_keys": prefixes["first_stage_model."],
            "dtypes": sorted(dtypes), "metadata": metadata}


def _check_loader(family, path, saved):
    """ComfyUI's loader (what CheckpointLoaderSimple runs) detects the family and reads every saved
    weight back unchanged (the missing CLIP-L text_projection is the only gap, as with a real file)."""
    import torch
    import comfy.model_base
    import comfy.sd
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)
    config = type(model.model.model_config).__name__
    want = {"sd15": ("SD15", comfy.model_base.ModelType.EPS), "sd2": ("SD20", comfy.model_base.ModelType.V_PREDICTION)}[family]
    assert (config, model.model.model_type) == want, (config, model.model.model_type)
    mismatched = []
    for part, module in (("unet", model.model.diffusion_model), ("clip", clip.cond_stage_model),
                         ("vae", vae.first_stage_model)):
        loaded = module.state_dict()
        for name, t in saved[part].items():
            if name not in loaded:
                mismatched.append(f"{part}:{name} not loaded")
            elif not torch.equal(loaded[name].to(t.dtype), t):
                mismatched.append(f"{part}:{name} differs")
    allowed = {"clip:clip_l.transformer.text_projection.weight", "clip:clip_l.logit_scale"} if family == "sd15" else set()
    wrong = [m for m in mismatched if m.rsplit(" ", 1)[0] not in allowed]
    assert not wrong, f"{family}: the loader did not read back {len(wrong)} weights: {wrong[:5]}"
    return {"detected": config, "model_type": model.model.model_type.name, "not_in_file": sorted(mismatched)}


def build(family: str) -> dict:
    import gc
    import torch
    import comfy.model_management
    import comfy.sd
    started = time.time()
    path = checkpoint_path(family)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    model, clip, vae, left = _build_models(family, torch.float32)
    built = time.time()
    stats = _sanity(family, model, clip, vae)
    checked = time.time()
    for module in (model.model.diffusion_model, clip.cond_stage_model, vae.first_stage_model):
        module.half()                                   # save float16, as downloaded checkpoints are
    saved = {"unet": model.model.diffusion_model.state_dict(), "clip": clip.cond_stage_model.state_dict(),
             "vae": vae.first_stage_model.state_dict()}
    tmp = path[:-len(".safetensors")] + ".partial.safetensors"     # ComfyUI's loader goes by the suffix
    comfy.sd.save_checkpoint(tmp, model, clip, vae, metadata={
        "perfusion_test.builder_version": BUILDER_VERSION, "perfusion_test.random_weights": "seeded, not a trained model"})
    del model, clip, vae
    comfy.model_management.unload_all_models()
    gc.collect()
    wrote = time.time()
    keys = _check_keys(family, tmp)
    loader = _check_loader(family, tmp, saved)
    del saved
    gc.collect()
    os.replace(tmp, path)
    info = {"family": family, "builder_version": BUILDER_VERSION, "path": path, "bytes": os.path.getsize(path),
            "seed": SEEDS[family], "left_as_constructed": left, "sanity": stats, "file": keys, "loader": loader,
            "seconds": {"build": round(built - started, 1), "sanity": round(checked - built, 1),
                        "save": round(wrote - checked, 1), "check": round(time.time() - wrote, 1),
                        "total": round(time.time() - started, 1)}}
    with open(info_path(family) + ".partial", "w") as f:
        json.dump(info, f, indent=1)
    os.replace(info_path(family) + ".partial", info_path(family))
    return info


def sdxl_estimate() -> dict:
    """What a full-size SDXL would cost here, without writing its 7 GB file: building it in float16
    (init), and one UNet forward at a 32x32 latent (256 px) in float32, as a CPU server runs it."""
    import gc
    import torch
    import comfy.model_management
    t0 = time.time()
    model, clip, vae, _ = _build_models("sdxl", torch.float16)
    t_build = time.time() - t0
    params = {"unet": sum(p.numel() for p in model.model.diffusion_model.parameters()),
              "clip": sum(p.numel() for p in clip.cond_stage_model.parameters())}
    del clip, vae
    gc.collect()
    model.model.diffusion_model.float()
    comfy.model_management.load_models_gpu([model])
    x = torch.randn(2, 4, 32, 32)
    ctx = torch.randn(2, 77, 2048)
    y = torch.randn(2, model.model.adm_channels)
    with torch.inference_mode():
        t1 = time.time()
        model.model.apply_model(x, torch.tensor([5.0, 5.0]), c_crossattn=ctx, y=y)
        t_forward = time.time() - t1
    return {"family": "sdxl", "params": params, "file_bytes_fp16": 2 * (params["unet"] + params["clip"]) + 2 * 83_653_863,
            "seconds": {"build_fp16": round(t_build, 1), "unet_forward_batch2_32x32": round(t_forward, 1)}}


def main(argv):
    families = [a for a in argv if not a.startswith("-")] or ["sd15", "sd2"]
    unknown = [f for f in families if f not in ("sd15", "sd2")]
    if unknown:
        raise SystemExit(f"real_checkpoints.py: unknown family {unknown[0]!r}; choose sd15, sd2")
    _bootstrap_comfy()
    reason = refusal(families, os.environ.get("COMFYUI_PATH", ""))
    if reason:
        print(json.dumps({"refused": reason}), flush=True)
        return 3
    for family in families:
        if is_built(family) and "--force" not in argv:
            with open(info_path(family)) as f:
                info = json.load(f)
            info["cached"] = True
        else:
            info = build(family)
        print(json.dumps(info), flush=True)
    if "--sdxl-estimate" in argv:
        print(json.dumps(sdxl_estimate()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
