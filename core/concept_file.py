"""Concept file format v1: one ``.safetensors`` file per concept (docs/concept-format.md).

Tensors (float16 or float32):
    embedding.clip_l [768] (sd1, sdxl) · embedding.clip_g [1280] (sdxl) · embedding.clip_h [1024] (sd2)
    i_star [D] · G_i_star [D] (= C^-1 i_star) · superclass_encoding [D]      D = context_dim
    v_target.<attn2 module path inside diffusion_model> [d_out], one per cross-attention layer
Metadata (strings): perfusion.format = "1", perfusion.trigger, perfusion.superclass,
    perfusion.model (sd1 | sd2 | sdxl), perfusion.context_dim, perfusion.beta, perfusion.tau,
    perfusion.covariance_sha256; optional: perfusion.clip_layer, perfusion.encoder_fingerprint and the
    covariance's perfusion.covariance_* / perfusion.corpus_sha256 (docs/concept-format.md); any other
    ``perfusion.*`` key is kept as free-form info.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from .atomic_file import save_atomic
from .errors import ConceptError
from .gate_settings import SLIDERS

FORMAT_VERSION = "1"
MODEL_FAMILIES = ("sd1", "sd2", "sdxl")
# Which text-encoder towers a family's token embedding has; their widths add up to context_dim.
FAMILY_TOWERS = {"sd1": ("clip_l",), "sd2": ("clip_h",), "sdxl": ("clip_l", "clip_g")}
REQUIRED_METADATA = ("perfusion.format", "perfusion.trigger", "perfusion.superclass", "perfusion.model",
                     "perfusion.context_dim", "perfusion.beta", "perfusion.tau",
                     "perfusion.covariance_sha256")
VECTOR_KEYS = ("i_star", "G_i_star", "superclass_encoding")
V_TARGET_PREFIX = "v_target."
EMBEDDING_PREFIX = "embedding."
DEFAULT_BETA, DEFAULT_TAU = 0.7, 0.15
# A header larger than this is not a concept file (a real one is a few KB).
MAX_HEADER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Concept:
    """A concept in memory; tensors are float32 on the CPU."""
    trigger: str
    superclass: str
    model: str
    context_dim: int
    embeddings: dict            # tower ("clip_l", "clip_g", "clip_h") -> [width]
    i_star: torch.Tensor        # [D]
    G_i_star: torch.Tensor      # [D]
    superclass_encoding: torch.Tensor  # [D]
    v_targets: dict             # attn2 path inside diffusion_model -> [d_out]
    beta: float = DEFAULT_BETA
    tau: float = DEFAULT_TAU
    covariance_sha256: str = ""
    info: dict = field(default_factory=dict)   # other perfusion.* metadata, e.g. steps, date
    name: str = ""              # file name, for messages

    @property
    def label(self) -> str:
        return f"concept '{self.name or self.trigger}'"


def _fail(name: str, problem: str) -> ConceptError:
    return ConceptError(f"concept file '{name}': {problem}")


def validate_concept(concept: Concept) -> None:
    """Raise ConceptError naming the file and what was expected, or return."""
    n = concept.name or concept.trigger or "<unnamed>"
    if not isinstance(concept.trigger, str) or not concept.trigger.strip():
        raise _fail(n, "perfusion.trigger is empty; expected the concept word used in prompts, e.g. 'sks'")
    if concept.trigger != concept.trigger.strip() or any(c.isspace() for c in concept.trigger):
        raise _fail(n, f"perfusion.trigger {concept.trigger!r} must be one word without spaces")
    if not concept.superclass.strip():
        raise _fail(n, "perfusion.superclass is empty; expected a word such as 'dog'")
    if concept.model not in MODEL_FAMILIES:
        raise _fail(n, f"perfusion.model is {concept.model!r}; expected one of {', '.join(MODEL_FAMILIES)}")
    d = concept.context_dim
    if not (isinstance(d, int) and d > 0):
        raise _fail(n, f"perfusion.context_dim is {d!r}; expected a positive integer")
    for key, value, field_name in (("perfusion.beta", concept.beta, "beta"), ("perfusion.tau", concept.tau, "tau")):
        lo, hi = SLIDERS[field_name][:2]
        if not math.isfinite(value) or not lo <= value <= hi:
            raise _fail(n, f"{key} is {value}; expected a number from {lo} to {hi}")

    towers = FAMILY_TOWERS[concept.model]
    if set(concept.embeddings) != set(towers):
        raise _fail(n, f"a {concept.model} concept needs the tensors "
                       f"{', '.join(EMBEDDING_PREFIX + t for t in towers)}; found "
                       f"{', '.join(EMBEDDING_PREFIX + t for t in concept.embeddings) or 'none'}")
    widths = 0
    for tower, vector in concept.embeddings.items():
        _check_vector(n, EMBEDDING_PREFIX + tower, vector)
        widths += vector.shape[0]
    if widths != d:
        raise _fail(n, f"the embedding widths ({' + '.join(str(v.shape[0]) for v in concept.embeddings.values())}) "
                       f"do not add up to perfusion.context_dim ({d})")
    for key in VECTOR_KEYS:
        vector = getattr(concept, key)
        _check_vector(n, key, vector)
        if vector.shape[0] != d:
            raise _fail(n, f"{key} has {vector.shape[0]} values; expected context_dim = {d}")
    energy = float(concept.i_star.double() @ concept.G_i_star.double())
    if not energy > 0:
        raise _fail(n, f"i_star . G_i_star = {energy:.3g}; expected a positive number "
                       "(G_i_star must be C^-1 i_star with C positive definite)")
    if not concept.v_targets:
        raise _fail(n, "it has no v_target.* tensors; expected one per cross-attention layer")
    for path, vector in concept.v_targets.items():
        _check_vector(n, V_TARGET_PREFIX + path, vector)


def _check_vector(name: str, key: str, vector) -> None:
    if not isinstance(vector, torch.Tensor) or vector.ndim != 1 or vector.shape[0] == 0:
        shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise _fail(name, f"tensor '{key}' has shape {shape}; expected a non-empty vector")
    if vector.dtype not in (torch.float16, torch.float32):
        raise _fail(name, f"tensor '{key}' is {str(vector.dtype).replace('torch.', '')}; expected float16 or float32")
    if not torch.isfinite(vector).all():
        raise _fail(name, f"tensor '{key}' contains NaN or Inf values")


def _sniff(path: str, name: str) -> None:
    """Refuse pickles and non-safetensors files before any parser touches them.

    A safetensors file is an 8-byte little-endian header length, then a JSON header starting with
    '{'. Only a file that is not that is judged by pickle / zip magic bytes: the length's first byte
    may itself be 0x80 or 'P'."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise _fail(name, f"cannot be read ({e.strerror or e})") from None
    if len(head) == 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 2 <= header_len <= min(MAX_HEADER_BYTES, os.path.getsize(path) - 8):
            return
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise _fail(name, "is a pickle / PyTorch file; concept files must be .safetensors "
                          "(pickle files can run code and are never loaded)")
    if len(head) < 9:
        raise _fail(name, "is not a safetensors file (too short)")
    raise _fail(name, "is not a safetensors file (its header is damaged)")


def read_concept(path: str, name: str | None = None) -> Concept:
    """Read and validate a concept file; raise ConceptError naming the file on any problem."""
    name = name or os.path.basename(path)
    if not os.path.isfile(path):
        raise _fail(name, f"not found at {path}")
    _sniff(path, name)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for damaged files
        raise _fail(name, f"is not a readable safetensors file ({e})") from None

    version = metadata.get("perfusion.format")
    if version is None:
        raise _fail(name, "has no 'perfusion.format' metadata: it is not a Perfusion concept "
                          "(a LoRA or textual-inversion embedding belongs in another loader)")
    if version != FORMAT_VERSION:
        raise _fail(name, f"uses concept format {version!r}; this version of the pack reads format "
                          f"{FORMAT_VERSION!r} (update the pack)")
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise _fail(name, f"misses the metadata {', '.join(missing)}")

    def number(key, kind):
        try:
            return kind(metadata[key])
        except ValueError:
            raise _fail(name, f"{key} is {metadata[key]!r}; expected {'an integer' if kind is int else 'a number'}") from None

    embeddings, v_targets, vectors, unknown = {}, {}, {}, []
    for key, tensor in tensors.items():
        if key.startswith(EMBEDDING_PREFIX):
            embeddings[key[len(EMBEDDING_PREFIX):]] = tensor
        elif key.startswith(V_TARGET_PREFIX):
            v_targets[key[len(V_TARGET_PREFIX):]] = tensor
        elif key in VECTOR_KEYS:
            vectors[key] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise _fail(name, f"has unexpected tensors {', '.join(sorted(unknown))}")
    absent = [k for k in VECTOR_KEYS if k not in vectors]
    if absent:
        raise _fail(name, f"misses the tensors {', '.join(absent)}")

    # Validate with the stored dtypes (so float64 / int files are refused), then keep float32.
    concept = Concept(
        trigger=metadata["perfusion.trigger"], superclass=metadata["perfusion.superclass"],
        model=metadata["perfusion.model"], context_dim=number("perfusion.context_dim", int),
        embeddings=embeddings, v_targets=v_targets, beta=number("perfusion.beta", float),
        tau=number("perfusion.tau", float), covariance_sha256=metadata["perfusion.covariance_sha256"],
        info={k: v for k, v in metadata.items() if k not in REQUIRED_METADATA},
        name=name, **vectors)
    validate_concept(concept)
    return _as_float32(concept)


def _as_float32(c: Concept) -> Concept:
    f32 = lambda t: t.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return Concept(
        trigger=c.trigger, superclass=c.superclass, model=c.model, context_dim=c.context_dim,
        embeddings={k: f32(v) for k, v in c.embeddings.items()},
        i_star=f32(c.i_star), G_i_star=f32(c.G_i_star), superclass_encoding=f32(c.superclass_encoding),
        v_targets={k: f32(v) for k, v in c.v_targets.items()}, beta=c.beta, tau=c.tau,
        covariance_sha256=c.covariance_sha256, info=dict(c.info), name=c.name)


def concept_tensors(concept: Concept, dtype=torch.float16) -> dict:
    out = {EMBEDDING_PREFIX + k: v for k, v in concept.embeddings.items()}
    out.update({k: getattr(concept, k) for k in VECTOR_KEYS})
    out.update({V_TARGET_PREFIX + k: v for k, v in concept.v_targets.items()})
    return {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in out.items()}


def concept_metadata(concept: Concept) -> dict:
    meta = {str(k): str(v) for k, v in concept.info.items()}
    meta.update({
        "perfusion.format": FORMAT_VERSION, "perfusion.trigger": concept.trigger,
        "perfusion.superclass": concept.superclass, "perfusion.model": concept.model,
        "perfusion.context_dim": str(concept.context_dim), "perfusion.beta": repr(float(concept.beta)),
        "perfusion.tau": repr(float(concept.tau)), "perfusion.covariance_sha256": concept.covariance_sha256,
    })
    return meta


def write_concept(path: str, concept: Concept, dtype=torch.float16, overwrite: bool = False) -> str:
    """Validate, then write atomically (temp file + rename): a failure leaves no partial file."""
    validate_concept(concept)
    if dtype not in (torch.float16, torch.float32):
        raise ValueError(f"dtype must be torch.float16 or torch.float32, got {dtype}")
    if not overwrite and os.path.exists(path):
        raise ConceptError(f"concept file '{os.path.basename(path)}' already exists; choose another name")
    tensors = concept_tensors(concept, dtype)
    too_large = [k for k, t in tensors.items() if not torch.isfinite(t).all()]
    if too_large:
        raise ConceptError(f"concept '{concept.trigger}': {too_large[0]} has values too large for "
                           f"{str(dtype).replace('torch.', '')}; nothing was written")
    save_atomic(tensors, path, concept_metadata(concept), what="concept file", overwrite=overwrite)
    return path


def read_metadata(path: str) -> dict:
    """The header metadata only (cheap: no tensor is read)."""
    _sniff(path, os.path.basename(path))
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return dict(header.get("__metadata__") or {})
