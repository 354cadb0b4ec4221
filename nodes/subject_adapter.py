"""Subject adapters in ComfyUI: the model folders, loading a file, and checking it fits a model.

Files come from ``models/subject_ref`` (the pack's subjref.v1 files, MS-Diffusion's ``ms_adapter.bin``
or its safetensors conversion) and ``models/ipadapter`` (IP-Adapter files, the folder other IP-Adapter
packs use); extra_model_paths.yaml entries are kept. The kind is detected from the file's keys, never
from its folder or name.
The weights sit in their own ModelPatcher, which Apply attaches to the UNet's patcher so ComfyUI
loads and offloads them together (lowvram included).
"""

from __future__ import annotations

import os
import uuid

import folder_paths
import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.utils

from ..core import ms_diffusion, subjref_adapter
from ..core.errors import SubjectError
from ..core.ip_adapter import IPAdapter, split_state_dict
from ..core.ms_diffusion import MSDiffusionAdapter
from ..core.subject_layers import ip_layer_numbers, layer_key
from .model_folder import register_folder
from .model_patch import cross_attention_layers, model_family

FOLDERS = ("subject_ref", "ipadapter")
EXTENSIONS = {".safetensors", ".bin"}
BACKEND_IP, BACKEND_SUBJREF, BACKEND_MS = "ip", "subjref.v1", "ms-diffusion"
IP_MAX_SUBJECTS = 8
MS_MAX_SUBJECTS = 8          # allowed; the released MS-Diffusion weights saw at most 4 (TRAINED_MAX_SUBJECTS)


def register() -> None:
    for folder in FOLDERS:
        register_folder(folder, EXTENSIONS)


def adapter_names() -> list[str]:
    """"subject_ref/<file>" and "ipadapter/<file>" entries (the folder says which kind it is)."""
    names = []
    for folder in FOLDERS:
        names += [f"{folder}/{n}" for n in folder_paths.get_filename_list(folder)
                  if os.path.splitext(n)[1].lower() in EXTENSIONS]
    return names


def adapter_path(name: str) -> str:
    folder, _, file = name.partition("/")
    path = folder_paths.get_full_path(folder, file) if folder in FOLDERS else None
    if path is None:
        raise SubjectError(f"adapter file '{name}' not found; put IP-Adapter files in models/ipadapter and "
                           "subject adapters in models/subject_ref")
    return path


class LoadedAdapter:
    """The SUBJECT_ADAPTER socket: one loaded file, never mutated after loading."""

    def __init__(self, backend: str, module: torch.nn.Module, name: str):
        self.backend, self.module, self.name = backend, module, name
        self.id = f"{name}#{uuid.uuid4().hex}"
        self.patcher = comfy.model_patcher.ModelPatcher(
            module, load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device())

    @property
    def label(self) -> str:
        return f"adapter '{self.name}'"

    @property
    def max_subjects(self) -> int:
        if self.backend == BACKEND_SUBJREF:
            return self.module.config.max_subjects
        return MS_MAX_SUBJECTS if self.backend == BACKEND_MS else IP_MAX_SUBJECTS

    def describe(self) -> str:
        if self.backend in (BACKEND_IP, BACKEND_MS):
            return self.module.spec.describe()
        c = self.module.config
        return f"subject adapter {BACKEND_SUBJREF} ({c.family}, preset {c.preset})"


def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _load_options() -> dict:
    """Layers that cast their weights to the input's device and dtype (a partly loaded adapter still
    runs), stored in the dtype ComfyUI would store the UNet in on this device."""
    return {"ops": comfy.ops.manual_cast, "dtype": comfy.model_management.unet_dtype()}


def load_adapter(path: str, name: str) -> LoadedAdapter:
    """Detect the backend from the file itself; refuse anything else, naming the file."""
    try:
        safetensors = _is_safetensors(path)
    except OSError as e:
        raise SubjectError(f"adapter '{name}' cannot be read ({e.strerror or e})") from None
    if safetensors:
        meta, _ = subjref_adapter.read_header(path, name)
        if meta.get("format") == subjref_adapter.FORMAT:
            return LoadedAdapter(BACKEND_SUBJREF, subjref_adapter.read_adapter(path, name, **_load_options()), name)
    elif not path.lower().endswith(".bin"):
        raise SubjectError(f"adapter '{name}' is not a safetensors file")
    try:
        # .bin: ComfyUI's safe loader (weights_only unpickling), never plain pickle.
        sd = comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as e:      # noqa: BLE001 - any parser failure is a damaged file to the artist
        raise SubjectError(f"adapter '{name}' could not be read: {type(e).__name__}: {e}") from None
    if not isinstance(sd, dict):
        raise SubjectError(f"adapter '{name}' does not hold a dictionary of tensors; it cannot be used here")
    if ms_diffusion.split_state_dict(sd) is not None:
        return LoadedAdapter(BACKEND_MS, MSDiffusionAdapter.from_state_dict(sd, name, **_load_options()), name)
    if split_state_dict(sd) is None:
        raise SubjectError(f"adapter '{name}' is neither an IP-Adapter file (image_proj.* / ip_adapter.* keys), "
                           "an MS-Diffusion file (image_proj / ms_adapter / dummy_image_tokens) nor a subject "
                           f"adapter (metadata format '{subjref_adapter.FORMAT}'); it cannot be used here")
    return LoadedAdapter(BACKEND_IP, IPAdapter.from_state_dict(sd, name, **_load_options()), name)


def _cross_attention_keys(model) -> dict:
    """{(block, id, index): attn2 path} of this UNet; refuses models that are not SD-style UNets."""
    layers = cross_attention_layers(model)
    try:
        keys = {layer_key(path): path for path in layers}
    except ValueError:
        keys = {}
    if not keys or len(keys) != len(layers):
        raise SubjectError("model: subject references work on SD1.x, SD2.x and SDXL UNets; this model's "
                           "cross-attention layers are laid out differently")
    return keys


def check_fits(adapter: LoadedAdapter, model) -> dict:
    """Refuse an adapter made for another model; returns {layer key: attn2 path}."""
    keys = _cross_attention_keys(model)
    family, context_dim = model_family(model)
    layers = cross_attention_layers(model)
    if adapter.backend in (BACKEND_IP, BACKEND_MS):
        spec = adapter.module.spec
        if spec.context_dim != context_dim or len(spec.hidden) != len(keys):
            raise SubjectError(f"{adapter.label} is an {spec.describe()} with {len(spec.hidden)} cross-attention "
                               f"layers of context {spec.context_dim}; this model is {family} with {len(keys)} "
                               f"layers of context {context_dim}. Use the adapter made for this checkpoint")
        for key, number in ip_layer_numbers(keys).items():
            width = layers[keys[key]].to_k.out_features
            if spec.hidden[number] != width:
                raise SubjectError(f"{adapter.label}: layer {number} has width {spec.hidden[number]}, this model's "
                                   f"{keys[key]} has {width}; the adapter is for another model")
        return keys
    c = adapter.module.config
    blocks = {path[: -len(".attn2")]: layers[path].to_q.in_features for path in layers}
    conv_in = model.get_model_object("diffusion_model").input_blocks[0][0]
    if c.family != family or dict(c.blocks) != blocks or c.model_channels != conv_in.out_channels:
        raise SubjectError(f"{adapter.label} was trained for {c.family} ({len(c.blocks)} transformer blocks, "
                           f"{c.model_channels} channels); this model is {family} ({len(blocks)} blocks, "
                           f"{conv_in.out_channels} channels). Use an adapter trained on this kind of checkpoint")
    return keys
