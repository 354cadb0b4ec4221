"""The text encoder's covariance C, computed in the graph on first use and cached in
models/perfusion/covariance/<key>.safetensors.

The cache is found by what C depends on: the encoder's fingerprint (its encodings of fixed probe
prompts at the layer in use, core/encoder_fingerprint.py), the layer, the corpus and which token
positions count. The same checkpoint loaded in another process, on another day, stored in another
dtype, finds the same file and so gives its concepts the same key.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.utils

from ..core import covariance as cov
from ..core import encoder_fingerprint as fingerprints
from ..core.clip_layer import layer_for
from ..core.errors import ConceptError
from . import model_folder
from .clip_patch import encode_prompts

SHIPPED_CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "captions.txt")
# PERFUSION_CAPTIONS: another caption file (one caption per line) for C, e.g. captions of your own domain.
CORPUS = os.environ.get("PERFUSION_CAPTIONS") or SHIPPED_CORPUS
# Which positions of each 77-token chunk count: "real" (BOS, the words, the first EOS) or "all"
# (the padding too). The edit acts on every position, padding included; bench/gate_selectivity.py
# (bench/results/gate_selectivity.md) measured that counting the padding makes padding tokens 7x less
# similar to a concept (E[s^2] 0.00358 -> 0.00051) and leaves real tokens as they were (0.00326 vs
# 0.00342); the encoder computes all 77 positions either way, so it costs nothing.
POSITIONS = "all"
BATCH = 64
CACHE_FORMAT = "2"         # cache files of format 1 (a hash of every CLIP weight) are ignored
log = logging.getLogger("perfusion")


@dataclass(frozen=True)
class EncoderCovariance:
    covariance: torch.Tensor     # [D, D] float64, shrunk (core/covariance.py)
    key: str                     # perfusion.covariance_sha256 of the concepts trained with it
    fingerprint: torch.Tensor    # [256] float32
    layer: str                   # core/clip_layer.py name, e.g. "last", "-2"
    info: dict                   # perfusion.* metadata recorded in each concept

    def concept_info(self) -> dict:
        return {**self.info, "perfusion.clip_layer": self.layer,
                "perfusion.encoder_fingerprint": fingerprints.to_text(self.fingerprint)}


def read_corpus(path=None):
    with open(path or CORPUS, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _corpus_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _text_model(clip):
    return getattr(clip.cond_stage_model, "inner", clip.cond_stage_model)


def encoder_name(clip) -> str:
    return f"{type(_text_model(clip)).__name__} at layer {encoding_layer(clip)}"


def encoding_layer(clip) -> str:
    """The layer CLIP.encode_from_tokens encodes at (it sets the towers the same way)."""
    return layer_for(clip.cond_stage_model, clip.layer_idx)


def _end_token(clip, key):
    tokenizer = getattr(clip.tokenizer, "inner", clip.tokenizer)
    return getattr(getattr(tokenizer, "clip_" + key, None), "end_token", None)


def _real_token_count(section, end_token):
    for k, t in enumerate(section):
        if k > 0 and t[0] == end_token:
            return k + 1                      # BOS ... words ... first EOS
    return len(section)


def _chunks(tokens):
    """One token dict per 77-token chunk of a tokenized prompt (a long prompt has several)."""
    key0 = next(iter(tokens))
    return [{k: [v[c]] for k, v in tokens.items()} for c in range(len(tokens[key0]))]


def _refuse_non_finite(clip, encodings, what):
    if not torch.isfinite(encodings).all():
        raise ConceptError(f"the text encoder ({encoder_name(clip)}) gives NaN or Inf encodings for {what}; "
                           "this CLIP cannot be used for Perfusion (check the checkpoint file and any LoRA on its CLIP)")


def encoder_fingerprint(clip) -> torch.Tensor:
    """The CLIP's fingerprint at its layer setting: one text-encoder batch of 8 short prompts."""
    tokens = [clip.tokenize(p) for p in fingerprints.PROBES]
    key0 = next(iter(tokens[0]))
    end_token = _end_token(clip, key0)
    eos = [_real_token_count(t[key0][0], end_token) - 1 for t in tokens]
    with torch.inference_mode():
        encodings = encode_prompts(clip, [_chunks(t)[0] for t in tokens])[0]
    _refuse_non_finite(clip, encodings, "the probe prompts")
    return fingerprints.fingerprint(encodings, eos)


def compute_covariance(clip, captions, progress=None, positions=None) -> cov.CovarianceEstimate:
    """C over the token encodings of ``captions`` (every 77-token chunk; the caption is the sampling
    unit of the shrinkage), at the positions ``positions`` ("real" or "all") of each chunk."""
    positions = positions or POSITIONS
    if positions not in ("real", "all"):
        raise ValueError(f"positions must be 'real' or 'all', got {positions!r}")
    accumulator = None
    pending, owners, key0, end_token = [], [], None, None

    def flush():
        nonlocal accumulator
        with torch.inference_mode():
            encodings = encode_prompts(clip, [c for c, _ in pending])[0]          # [chunks, 77, D]
        if not torch.isfinite(encodings).all():
            bad = next(k for k in range(encodings.shape[0]) if not torch.isfinite(encodings[k]).all())
            _refuse_non_finite(clip, encodings[bad], f"the caption {captions[owners[bad]]!r}")
        if accumulator is None:
            accumulator = cov.CovarianceAccumulator(encodings.shape[-1])
        rows = []
        for k, (chunk, count) in enumerate(pending):
            rows.append(encodings[k, :count])
            if k + 1 == len(pending) or owners[k + 1] != owners[k]:
                accumulator.add(torch.cat(rows))                                 # one caption
                rows = []
        pending.clear()
        owners.clear()

    for index, text in enumerate(captions):
        comfy.model_management.throw_exception_if_processing_interrupted()
        tokens = clip.tokenize(text)
        if key0 is None:
            key0 = next(iter(tokens))
            end_token = _end_token(clip, key0)
        for chunk in _chunks(tokens):
            section = chunk[key0][0]
            count = len(section) if positions == "all" else _real_token_count(section, end_token)
            pending.append((chunk, count))
            owners.append(index)
        if len(pending) >= BATCH:
            # never split a caption across batches: its chunks are flushed together
            flush()
            if progress is not None:
                progress(index + 1, len(captions))
    if pending:
        flush()
    if progress is not None:
        progress(len(captions), len(captions))
    if accumulator is None:
        raise ConceptError("the caption corpus is empty; no covariance can be estimated")
    return accumulator.estimate()


def _cache_folder():
    return os.path.join(model_folder.output_folder(), "covariance")


def _find_cached(fingerprint, layer, corpus_sha, positions):
    """The cached entry for this encoder (the closest fingerprint within tolerance), or None."""
    best = None
    for path in sorted(glob.glob(os.path.join(_cache_folder(), "*.safetensors"))):
        entry = cov.read_covariance(path)
        if entry is None:
            continue
        meta, tensors = entry
        if (meta.get("perfusion.covariance_cache") != CACHE_FORMAT or meta.get("perfusion.clip_layer") != layer
                or meta.get("perfusion.corpus_sha256") != corpus_sha
                or meta.get("perfusion.covariance_positions") != positions or "fingerprint" not in tensors):
            continue
        d = fingerprints.distance(fingerprint, tensors["fingerprint"].float())
        if d <= fingerprints.TOLERANCE and (best is None or d < best[0]):
            best = (d, meta, tensors)
    return best


def covariance_for(clip, show_progress=True, corpus_path=None) -> EncoderCovariance:
    """This CLIP's C (at its layer setting, LoRA strengths on it included), from the cache or computed
    now with a progress bar, with the key and metadata its concepts record."""
    corpus_path = corpus_path or CORPUS
    corpus_sha = _corpus_sha256(corpus_path)
    layer = encoding_layer(clip)
    fp = encoder_fingerprint(clip)
    found = _find_cached(fp, layer, corpus_sha, POSITIONS)
    if found is not None:
        _, meta, tensors = found
        info = {k: v for k, v in meta.items() if k in _CONCEPT_KEYS}
        return EncoderCovariance(tensors["covariance"].to(torch.float64), meta["perfusion.covariance_sha256"],
                                 tensors["fingerprint"].float(), layer, info)

    captions = read_corpus(corpus_path)
    log.info("Perfusion: computing the text-encoder covariance over %d captions (once per text encoder)", len(captions))
    bar = comfy.utils.ProgressBar(len(captions)) if show_progress else None
    estimate = compute_covariance(clip, captions, (lambda done, total: bar.update_absolute(done, total)) if bar else None)
    key = hashlib.sha256(fingerprints.to_text(fp).encode() + f"|{layer}|{corpus_sha}|{POSITIONS}".encode()).hexdigest()
    info = {**estimate.info(), "perfusion.corpus_sha256": corpus_sha, "perfusion.covariance_positions": POSITIONS}
    log.info("Perfusion: covariance over %d tokens of %d captions: shrinkage %.3g, condition number %.3g "
             "(unshrunk %.3g)", estimate.tokens, estimate.captions, estimate.intensity, estimate.condition,
             estimate.sample_condition)
    meta = {**info, "perfusion.covariance_cache": CACHE_FORMAT, "perfusion.clip_layer": layer,
            "perfusion.encoder": type(_text_model(clip)).__name__,
            "perfusion.covariance_ledoit_wolf": f"{estimate.ledoit_wolf:.6g}"}
    cov.save_covariance(os.path.join(_cache_folder(), f"{key}.safetensors"),
                        {"covariance": estimate.covariance, "fingerprint": fp}, key, meta)
    return EncoderCovariance(estimate.covariance, key, fp, layer, info)


_CONCEPT_KEYS = ("perfusion.covariance_shrinkage", "perfusion.covariance_condition", "perfusion.covariance_tokens",
                 "perfusion.covariance_captions", "perfusion.corpus_sha256", "perfusion.covariance_positions")
