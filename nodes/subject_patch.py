"""Puts subjects on a ComfyUI ModelPatcher: small patch objects, all per-step data prepared once.

* "ip": an attn2 *replace* patch on every cross-attention key (("middle", 0, i) included). It runs
  the text attention exactly as ComfyUI would (or the patch another pack put on that key, wrapped,
  never overwritten), then adds the regional image term (core/subject_attention.py). ComfyUI calls
  ``attn2.to_k`` / ``to_v`` itself before a replace patch, so Perfusion's edit still fires.
  Other packs that *add* to an existing replace object (the ``Attn2Replace.add(callback, **kwargs)``
  protocol of IPAdapter-style packs) can add to ours.
* "subjref.v1": a ``middle_patch`` (between attn1 and attn2: gated self-attention over the visual
  tokens and the subjects' grounding tokens) and an ``input_block_patch`` on ("input", 0) (the
  location-mask channel added to conv_in's output).

Per forward: the time window is checked once (one scalar read per forward), region grids, K/V and
grounding tokens come from caches keyed by (resolution | layer, device, dtype). ``clone()``
deep-copies model options; these objects copy shallowly (the caches and weights are shared).
"""

from __future__ import annotations

import copy

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension

from ..core.subject_attention import regional_image_attention
from ..core.subject_layers import block_path, ip_layer_numbers
from ..core.subject_regions import subject_grids
from ..core.subjects import BRANCH_TABLE_KEY, BRANCHES_CFG, SUBJECT, branch_roles, table_for_guider
from .subject_adapter import BACKEND_IP, check_fits

ADDITIONAL_MODELS_KEY = "subject_reference"
WRAPPER_KEY = "subject_reference"


class SubjectState:
    """What every patch of one Apply node shares: the adapter, the subjects, their σ windows, caches."""

    def __init__(self, adapter, subjects, sigma_windows):
        self.adapter, self.subjects, self.sigma_windows = adapter, tuple(subjects), tuple(sigma_windows)
        self.weights = torch.tensor([s.weight for s in self.subjects], dtype=torch.float32)
        self._cache = {}
        self._active = (None, None)

    def active(self, extra_options) -> list:
        """Indices of the subjects whose [start, end] window holds this step's σ (once per forward)."""
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return [i for i, s in enumerate(self.subjects) if s.weight != 0]
        last, indices = self._active
        if last is not sigmas:
            sigma = float(sigmas.flatten()[0])
            indices = [i for i, (s, (high, low)) in enumerate(zip(self.subjects, self.sigma_windows))
                       if s.weight != 0 and low <= sigma <= high]
            self._active = (sigmas, indices)
        return indices

    def cached(self, key, make):
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = make()
        return value

    def regions(self, height, width, device, dtype) -> torch.Tensor:
        """[S, H*W] region weights (overlaps scaled) x subject weight."""
        def make():
            grids = subject_grids([(s.box, s.region_mask) for s in self.subjects], height, width)
            return (grids * self.weights[:, None]).to(device, dtype)
        return self.cached(("regions", height, width, device, dtype), make)

    def rows(self, roles, batch, device):
        """Batch rows whose chunk carries the subject, and their chunk role index (0 subject, 1 plain)."""
        def make():
            per = batch // len(roles)
            return torch.tensor([0 if r == SUBJECT else 1 for r in roles for _ in range(per)], device=device)
        return self.cached(("rows", tuple(roles), batch, device), make)


def _grid_shape(extra_options, length):
    """The layer's H x W: exact from activations_shape; else from the latent's aspect (as ComfyUI's
    own layers are strided: each level halves H and W, rounding up)."""
    shape = extra_options.get("activations_shape")
    if shape is not None and shape[-1] * shape[-2] == length:
        return shape[-2], shape[-1]
    _, _, h, w = extra_options["original_shape"]
    while h * w > length:
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != length:
        raise RuntimeError(f"subject reference: cannot map {length} tokens to the latent grid {h}x{w}")
    return h, w


class IPAttention:
    """attn2 replace patch for one layer key."""

    def __init__(self, state: SubjectState, number: int, previous=None):
        self.state, self.number, self.previous = state, number, previous
        self.callback, self.kwargs = [], []        # the Attn2Replace protocol of other packs

    def add(self, callback, **kwargs):
        self.callback.append(callback)
        self.kwargs.append(kwargs)

    def __deepcopy__(self, memo):
        clone = copy.copy(self)
        clone.callback, clone.kwargs = list(self.callback), [dict(k) for k in self.kwargs]
        clone.previous = copy.deepcopy(self.previous, memo)
        return clone

    def _keys_values(self, device, dtype):
        """[2, S, T, hidden]: K and V for (subject, plain) of every subject, computed once."""
        def make():
            adapter = self.state.adapter.module
            k_s, v_s, k_p, v_p = [], [], [], []
            with torch.inference_mode():
                for s in self.state.subjects:
                    k, v = adapter.keys_values(s.tokens[None], self.number)
                    kp, vp = adapter.keys_values(s.plain_tokens[None], self.number)
                    k_s.append(k[0]), v_s.append(v[0]), k_p.append(kp[0]), v_p.append(vp[0])
            keys = torch.stack([torch.stack(k_s), torch.stack(k_p)]).to(device, dtype)
            values = torch.stack([torch.stack(v_s), torch.stack(v_p)]).to(device, dtype)
            return keys, values
        return self.state.cached(("kv", self.number, device, dtype), make)

    def image_term(self, q, extra_options):
        active = self.state.active(extra_options)
        if not active:
            return None
        batch, length, _ = q.shape
        roles = branch_roles(extra_options.get("cond_or_uncond", [0]), extra_options.get(BRANCH_TABLE_KEY, BRANCHES_CFG))
        height, width = _grid_shape(extra_options, length)
        regions = self.state.regions(height, width, q.device, q.dtype)          # [S, L]
        keys, values = self._keys_values(q.device, q.dtype)                      # [2, S, T, hidden]
        role_index = self.state.rows(roles, batch, q.device)                     # [B]
        if len(active) < len(self.state.subjects):
            index = torch.tensor(active, device=q.device)
            regions, keys, values = regions[index], keys[:, index], values[:, index]
        return regional_image_attention(q, keys[role_index], values[role_index],
                                        regions.t()[None].expand(batch, -1, -1), extra_options["n_heads"])

    def __call__(self, q, k, v, extra_options):
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                                      attn_precision=extra_options.get("attn_precision"),
                                                      transformer_options=extra_options)
        term = self.image_term(q, extra_options)
        if term is not None:
            out = out + term
        if self.callback:
            sigmas = extra_options.get("sigmas")
            sigma = float(sigmas.flatten()[0]) if sigmas is not None else 999999999.9
            for callback, kwargs in zip(self.callback, self.kwargs):
                if kwargs.get("sigma_end", -1e9) <= sigma <= kwargs.get("sigma_start", 1e9):
                    out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(q.dtype)

    def set_new_condition(self, **kwargs):
        raise RuntimeError("an older IPAdapter node tried to add itself to a layer that 'Apply Subject Reference' "
                           "already patches; put that IPAdapter node before 'Apply Subject Reference' in the graph")


class GroundingPatch:
    """middle_patch: the subjects' gated self-attention in every transformer block (subjref.v1)."""

    def __init__(self, state: SubjectState, paths: dict):
        self.state, self.paths = state, paths        # {(block, id, index): transformer block path}

    def __deepcopy__(self, memo):
        return copy.copy(self)

    def _objs(self, active, device, dtype):
        def make():
            return torch.cat([self.state.subjects[i].tokens for i in active]).to(device, dtype)[None]
        return self.state.cached(("objs", tuple(active), device, dtype), make)

    def _visibility(self, active, height, width, device, dtype):
        """([1, N, M] bool: query sees grounding token, [1, N, 1] union region x weight)."""
        def make():
            regions = self.state.regions(height, width, device, torch.float32)[active]      # [S, N]
            n_patch = self.state.subjects[active[0]].tokens.shape[0]
            visible = (regions > 0).t().repeat_interleave(n_patch, dim=1)                   # [N, S*n_patch]
            union = regions.sum(dim=0)        # overlaps already scaled: sum_s w_s R_s
            return visible[None], union[None, :, None].to(dtype)
        return self.state.cached(("visible", tuple(active), height, width, device, dtype), make)

    def __call__(self, x, extra_options):
        block = extra_options.get("block")
        path = self.paths.get((block[0], block[1], extra_options.get("block_index", 0))) if block else None
        active = self.state.active(extra_options)
        if path is None or not active:
            return x
        roles = branch_roles(extra_options.get("cond_or_uncond", [0]), extra_options.get(BRANCH_TABLE_KEY, BRANCHES_CFG))
        rows = self.state.rows(roles, x.shape[0], x.device)
        height, width = _grid_shape(extra_options, x.shape[1])
        fuser = self.state.adapter.module.fuser_by_path[path]
        dtype = next(fuser.parameters()).dtype
        objs = self._objs(active, x.device, dtype)
        visible, region = self._visibility(active, height, width, x.device, dtype)
        selected = (rows == 0).nonzero().flatten()
        if selected.numel() == 0:
            return x
        xs = x if selected.numel() == x.shape[0] else x[selected]
        ys = fuser(xs.to(dtype), objs.expand(xs.shape[0], -1, -1), visible, region).to(x.dtype)
        if selected.numel() == x.shape[0]:
            return ys
        return x.index_copy(0, selected, ys)

    def to(self, device_or_dtype):
        return self


class LocationMaskPatch:
    """input_block_patch: adds mask_in(location mask) to conv_in's output (("input", 0)) on subject rows."""

    def __init__(self, state: SubjectState):
        self.state = state

    def __deepcopy__(self, memo):
        return copy.copy(self)

    def __call__(self, h, transformer_options):
        if transformer_options.get("block") != ("input", 0):
            return h
        active = self.state.active(transformer_options)
        if not active:
            return h
        roles = branch_roles(transformer_options.get("cond_or_uncond", [0]),
                             transformer_options.get(BRANCH_TABLE_KEY, BRANCHES_CFG))
        rows = self.state.rows(roles, h.shape[0], h.device)
        height, width = h.shape[-2:]
        conv = self.state.adapter.module.mask_in

        def make():
            region = self.state.regions(height, width, h.device, torch.float32)[active]
            mask = (region > 0).any(dim=0).float().reshape(1, 1, height, width)
            return conv(mask.to(conv.weight.dtype)).to(h.dtype)
        added = self.state.cached(("mask_in", tuple(active), height, width, h.device, h.dtype), make)
        return h + added * (rows == 0).to(h.dtype)[:, None, None, None]


def _outer_sample_wrapper(executor, *args, **kwargs):
    """Once per sampling: tell the patches which cond index is which branch (explicit table)."""
    guider = executor.class_obj
    names = set(getattr(guider, "original_conds", {}) or {})
    options = getattr(guider, "model_options", None)
    if isinstance(options, dict):
        options.setdefault("transformer_options", {})[BRANCH_TABLE_KEY] = table_for_guider(names)
    return executor(*args, **kwargs)


def apply_subjects(model, adapter, subjects):
    """A clone of ``model`` with ``subjects`` acting through ``adapter``."""
    keys = check_fits(adapter, model)
    sampling = model.get_model_object("model_sampling")
    windows = [(float(sampling.percent_to_sigma(s.start_percent)), float(sampling.percent_to_sigma(s.end_percent)))
               for s in subjects]
    state = SubjectState(adapter, subjects, windows)
    patched = model.clone()
    if adapter.backend == BACKEND_IP:
        replaces = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
        for key, number in ip_layer_numbers(keys).items():
            previous = replaces.get(key, replaces.get(key[:2]))
            patched.set_model_attn2_replace(IPAttention(state, number, previous), key[0], key[1], key[2])
    else:
        patched.set_model_patch(GroundingPatch(state, {key: block_path(path) for key, path in keys.items()}),
                                "middle_patch")
        patched.set_model_input_block_patch(LocationMaskPatch(state))
    attached = list(patched.get_additional_models_with_key(ADDITIONAL_MODELS_KEY))
    if adapter.patcher not in attached:
        patched.set_additional_models(ADDITIONAL_MODELS_KEY, attached + [adapter.patcher])
    wrappers = comfy.patcher_extension.WrappersMP
    patched.remove_wrappers_with_key(wrappers.OUTER_SAMPLE, WRAPPER_KEY)
    patched.add_wrapper_with_key(wrappers.OUTER_SAMPLE, WRAPPER_KEY, _outer_sample_wrapper)
    return patched
