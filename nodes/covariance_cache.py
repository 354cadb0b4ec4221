"""The text encoder's covariance C, computed in the graph on first use and cached in
models/perfusion/covariance/<sha256>.safetensors (key: the text encoder's weights, its layer setting
and the caption corpus)."""

from __future__ import annotations

import hashlib
import logging
import os

import torch

import comfy.model_management
import comfy.utils

from ..core import covariance as cov
from . import model_folder
from .clip_patch import encode_prompts

SHIPPED_CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "captions.txt")
# PERFUSION_CAPTIONS: another caption file (one caption per line) for C, e.g. captions of your own domain.
CORPUS = os.environ.get("PERFUSION_CAPTIONS") or SHIPPED_CORPUS
BATCH = 64
log = logging.getLogger("perfusion")


def read_corpus(path=None):
    with open(path or CORPUS, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def covariance_key(clip, corpus_path=None) -> str:
    """SHA-256 of the text encoder's weights as they are used (LoRA patches on the CLIP merged, so
    their strengths count), its layer setting and the caption corpus. Hashed on every call: a few
    seconds at most for SDXL's encoders, once per training."""
    corpus_path = corpus_path or CORPUS
    with open(corpus_path, "rb") as f:
        corpus_sha = hashlib.sha256(f.read()).hexdigest()
    clip.load_model()                                 # patched weights, whether or not it was loaded
    return cov.tensors_sha256(clip.patcher.model_state_dict().items(),
                              extra=f"layer={clip.layer_idx}|corpus={corpus_sha}")


def _real_token_count(section, end_token):
    for k, t in enumerate(section):
        if k > 0 and t[0] == end_token:
            return k + 1                      # BOS ... words ... first EOS
    return len(section)


def compute_covariance(clip, captions, progress=None) -> torch.Tensor:
    """C over the non-padding token encodings of ``captions`` (one 77-token chunk each)."""
    accumulator = None
    tokenizer = clip.tokenizer
    for start in range(0, len(captions), BATCH):
        comfy.model_management.throw_exception_if_processing_interrupted()
        batch = captions[start:start + BATCH]
        tokens = [clip.tokenize(text) for text in batch]                # one 77-token chunk each
        key0 = next(iter(tokens[0]))
        end_token = getattr(getattr(tokenizer, "clip_" + key0, None), "end_token", None)
        counts = [_real_token_count(t[key0][0], end_token) for t in tokens]
        with torch.inference_mode():
            encodings = encode_prompts(clip, tokens)[0]                 # [len(batch), 77, D]
        real = torch.cat([encodings[k, :n] for k, n in enumerate(counts)])
        if accumulator is None:
            accumulator = cov.CovarianceAccumulator(real.shape[-1])
        accumulator.add(real)
        if progress is not None:
            progress(min(start + BATCH, len(captions)), len(captions))
    return accumulator.covariance()


def covariance_for(clip, show_progress=True):
    """(C float64 [D, D], its sha256 key), from the cache or computed now with a progress bar."""
    key = covariance_key(clip)
    path = os.path.join(model_folder.output_folder(), "covariance", f"{key}.safetensors")
    cached = cov.load_covariance(path, key)
    if cached is not None:
        return cached, key
    captions = read_corpus()
    log.info("Perfusion: computing the text-encoder covariance over %d captions (once per text encoder)", len(captions))
    bar = comfy.utils.ProgressBar(len(captions)) if show_progress else None
    C = compute_covariance(clip, captions, (lambda done, total: bar.update_absolute(done, total)) if bar else None)
    cov.save_covariance(path, C, key, {"perfusion.captions": len(captions), "perfusion.clip_layer": clip.layer_idx})
    return C, key
