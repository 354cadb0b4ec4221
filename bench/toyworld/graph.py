"""Runs the pack's nodes and ComfyUI's own nodes in this process, on the toy model: the same node classes
and functions a queued workflow calls (CLIPTextEncode, KSampler, VAEEncode/VAEDecode, TrainLoraNode,
LoraModelLoader, and the pack's trainer, loader and gate nodes), without the HTTP server.

``setup(work)`` makes ComfyUI importable, points ``models/perfusion`` at ``work/perfusion`` (the covariance
cache is kept in ``~/.cache`` across runs), loads the pack as ComfyUI would, and gives Perfusion's
covariance the world's own captions (``world_corpus``; a server gets them through PERFUSION_CAPTIONS).
"""

from __future__ import annotations

import os
import sys

from . import comfy_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "comfyui-perfusion-toyworld")
SAMPLER = {"steps": 20, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"}

_pack = None


def setup(work: str):
    """Returns the pack (its ``nodes`` and ``core`` packages)."""
    global _pack
    comfy_env.setup()
    import comfy.utils
    import folder_paths
    comfy.utils.PROGRESS_BAR_ENABLED = False
    concepts = os.path.join(work, "perfusion")
    os.makedirs(concepts, exist_ok=True)
    folder_paths.folder_names_and_paths["perfusion"] = ([concepts], {".safetensors"})
    folder_paths.set_output_directory(os.path.join(work, "output"))
    folder_paths.set_temp_directory(os.path.join(work, "temp"))
    if _pack is None:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from pack_loader import load_pack
        _pack = load_pack()
    _link_covariance_cache(concepts)
    # C over the world's own captions (as PERFUSION_CAPTIONS would set it in a server)
    _pack.nodes.covariance_cache.CORPUS = world_corpus()
    return _pack


def world_corpus() -> str:
    """The world's caption corpus as a file (written once into the cache), for PERFUSION_CAPTIONS."""
    from . import world
    path = os.path.join(CACHE, "world_captions_v1.txt")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        tmp = path + f".{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(world.caption_corpus()) + "\n")
        os.replace(tmp, path)
    return path


def _link_covariance_cache(concepts):
    """The covariance of the toy CLIP is computed once per machine (about a minute) and kept."""
    shared = os.path.join(CACHE, "covariance")
    os.makedirs(shared, exist_ok=True)
    link = os.path.join(concepts, "covariance")
    if not os.path.lexists(link):
        os.symlink(shared, link)


def encode(clip, text):
    import nodes
    return nodes.CLIPTextEncode().encode(clip, text)[0]


def sample(model, clip, vae, prompt, count, seed, negative="", **sampler):
    """``count`` images [count, 64, 64, 3] for one prompt, through KSampler and VAEDecode."""
    import nodes
    import torch
    settings = {**SAMPLER, **sampler}
    with torch.inference_mode():
        positive, negative = encode(clip, prompt), encode(clip, negative)
        latent = nodes.EmptyLatentImage().generate(64, 64, count)[0]
        latent = nodes.KSampler().sample(model, seed, settings["steps"], settings["cfg"], settings["sampler_name"],
                                         settings["scheduler"], positive, negative, latent, denoise=1.0)[0]
        return nodes.VAEDecode().decode(vae, latent)[0]


def vae_encode(vae, images):
    import nodes
    import torch
    with torch.inference_mode():
        return nodes.VAEEncode().encode(vae, images)[0]
