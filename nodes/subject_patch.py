"""Puts subjects on a ComfyUI ModelPatcher: small patch objects, all per-step data prepared once.

* "ip": an attn2 *replace* patch on every cross-attention key (("middle", 0, i) included). It runs
  the text attention exactly as ComfyUI would (or the patch another pack put on that key, wrapped,
  never overwritten), then adds the regional image term (core/subject_attention.py). ComfyUI calls
  ``attn2.to_k`` / ``to_v`` itself before a replace patch, so Perfusion's edit still fires.
  Other packs that *add* to an existing replace object (the ``Attn2Replace.add(callback, **kwargs)``
  protocol of IPAdapter-style packs) can add to ours.
* "ms-diffusion": the same attn2 replace patch on every key, whose image term is MS-Diffusion's joint
  masked softmax over [4 dummy | 16 tokens per subject] with the boxes rasterised on the layer's own
  grid (core/ms_diffusion.py); the negative branch gets no image term.
* "subjref.v1": a ``middle_patch`` (between attn1 and attn2: gated self-attention over the visual
  tokens and the subjects' grounding tokens) and an ``input_block_patch`` on ("input", 0) (the
  location-mask channel added to conv_in's output).

Per forward: the time windows are applied on the device (SubjectState.gate): every subject stays in
the computation and one outside its window gets region weight 0 (IP-Adapter), its columns masked out of
the joint softmax (MS-Diffusion), or its grounding tokens hidden and its region 0 (subjref.v1), so
the sampling path never reads a tensor value on the host (no device sync per step or per layer).
Region grids, K/V and grounding tokens come from caches keyed by (resolution | layer, device, dtype). ``clone()``
deep-copies model options; these objects copy shallowly (the caches and weights are shared).
"""

from __future__ import annotations

import copy
import functools
import math

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension

from ..core import ms_diffusion
from ..core.subject_attention import regional_image_attention
from ..core.subject_layers import block_path, ip_layer_numbers
from ..core.subject_regions import subject_grids
from ..core.subjects import BRANCH_TABLE_KEY, BRANCHES_CFG, SUBJECT, branch_roles, table_for_guider
from .subject_adapter import BACKEND_IP, BACKEND_MS, check_fits

ADDITIONAL_MODELS_KEY = "subject_reference"
WRAPPER_KEY = "subject_reference"
# Set once per sampling in transformer_options by _outer_sample_wrapper:
SAMPLING_KEY = "subject_reference_sampling"          # the sampled model's model_sampling (σ windows)
OUTER_REPLACES_KEY = "subject_reference_attn2"       # 2-tuple attn2 replaces that our 3-tuple keys shadow


@functools.lru_cache(maxsize=1024)
def _float32_bound(value: float, upper: bool) -> float:
    """A window bound as a float32 that decides like the float64 one: for an upper bound the largest
    float32 <= value, for a lower bound the smallest float32 >= value. A float32 σ compared on the
    device with it is inside exactly when its float64 value is inside the float64 window."""
    bound = torch.tensor(float(value), dtype=torch.float32)
    if upper and float(bound) > value:
        bound = torch.nextafter(bound, torch.tensor(-math.inf))
    elif not upper and float(bound) < value:
        bound = torch.nextafter(bound, torch.tensor(math.inf))
    return float(bound)


def _step_sigma(sigmas, device) -> torch.Tensor:
    """This step's σ (the first row's, as the host-side check read it) as a 0-d float32 tensor on
    ``device``: indexing, no host read."""
    return sigmas.detach().flatten()[0].to(device=device, dtype=torch.float32)


class SubjectState:
    """What every patch of one Apply node shares: the adapter, the subjects, their σ windows, caches."""

    def __init__(self, adapter, subjects, scale: float = 1.0):
        self.adapter, self.subjects, self.scale = adapter, tuple(subjects), float(scale)
        self.weights = torch.tensor([s.weight for s in self.subjects], dtype=torch.float32)
        # Weight 0: the subject never acts, it is left out of every computation (decided here, once).
        self.eligible = tuple(i for i, s in enumerate(self.subjects) if s.weight != 0)
        # Some subject acts only in part of the schedule: its window is applied on the device per forward.
        self.scheduled = any(self.subjects[i].start_percent > 0.0 or self.subjects[i].end_percent < 1.0
                             for i in self.eligible)
        self._cache = {}
        self._forward = (None, None, {})        # (σ tensor, model_sampling, this forward's device values)

    def windows(self, sampling) -> list:
        """(σ high, σ low) per subject from its start / end percent, for this model_sampling (a model
        sampling node after Apply changes the σ scale, so this is read at sampling time)."""
        return self.cached(("windows", id(sampling)), lambda: (sampling, [
            (float(sampling.percent_to_sigma(s.start_percent)), float(sampling.percent_to_sigma(s.end_percent)))
            for s in self.subjects]))[1]

    def active(self, extra_options) -> list:
        """Indices of the subjects whose [start, end] window holds this step's σ. Reads σ on the host: for
        tests and tools only; the sampling path uses ``gate`` (on the device)."""
        sigmas, sampling = extra_options.get("sigmas"), extra_options.get(SAMPLING_KEY)
        if sigmas is None or sampling is None:
            return list(self.eligible)
        sigma = float(sigmas.flatten()[0])
        windows = self.windows(sampling)
        return [i for i in self.eligible if windows[i][1] <= sigma <= windows[i][0]]

    def per_forward(self, extra_options, key, make):
        """A value made once per forward (per σ tensor the sampler passes) and reused by every layer."""
        sigmas, sampling = extra_options.get("sigmas"), extra_options.get(SAMPLING_KEY)
        last, last_sampling, values = self._forward
        if last is not sigmas or last_sampling is not sampling:
            values = {}
            self._forward = (sigmas, sampling, values)
        value = values.get(key)
        if value is None:
            value = values[key] = make()
        return value

    def gate(self, extra_options, device):
        """[E] bool on ``device``, one per eligible subject: its [start, end] window holds this step's σ,
        compared there (no host read). None when every eligible subject acts (no window set, or no σ /
        model_sampling given): then nothing needs gating."""
        if not self.scheduled:
            return None
        sigmas, sampling = extra_options.get("sigmas"), extra_options.get(SAMPLING_KEY)
        if sigmas is None or sampling is None:
            return None

        def make():
            bounds = self.cached(("window_bounds", id(sampling), device), lambda: torch.tensor(
                [[_float32_bound(self.windows(sampling)[i][0], True) for i in self.eligible],
                 [_float32_bound(self.windows(sampling)[i][1], False) for i in self.eligible]],
                dtype=torch.float32).to(device))                                     # [2, E]: high, low
            sigma = _step_sigma(sigmas, device)
            return (sigma <= bounds[0]) & (sigma >= bounds[1])
        return self.per_forward(extra_options, ("gate", device), make)

    def index(self, indices, device):
        """``indices`` as a long tensor on ``device`` (made once: no host-to-device copy per layer)."""
        return self.cached(("index", tuple(indices), device), lambda: torch.tensor(indices, device=device))

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

    def ms_cells(self, active, height, width):
        """[S, L] bool (CPU): the cells of the ``active`` subjects' boxes / region masks on one layer grid."""
        return self.cached(("ms_cells", tuple(active), height, width), lambda: ms_diffusion.subject_cells(
            [(s.box.xyxy(), s.region_mask) for s in (self.subjects[i] for i in active)], height, width))

    def ms_masks(self, active, height, width, device, dtype):
        """MS-Diffusion on one layer grid, for the active subjects: (bias [L, 4 + 16 S], inside [L], the
        index of the rows inside some box)."""
        def make():
            cells = self.ms_cells(active, height, width)
            n = self.subjects[active[0]].tokens.shape[0]
            dummy = self.adapter.module.spec.dummy_tokens
            bias = ms_diffusion.attention_bias(cells, n, dummy)
            inside = cells.any(dim=0)
            return bias.to(device, dtype), inside.to(device, dtype), torch.nonzero(inside).flatten().to(device)
        return self.cached(("ms_masks", tuple(active), height, width, device, dtype), make)

    def ms_gated_masks(self, extra_options, gate, active, height, width, device, dtype):
        """(bias, inside) of ``ms_masks`` with only the subjects ``gate`` (on the device) lets act, made
        there once per forward: the others' columns are closed to every query and their cells count as
        background, exactly as if they were not given (all acting: the same values as ``ms_masks``)."""
        def make():
            cells = self.cached(("ms_cells", tuple(active), height, width, device),
                                lambda: self.ms_cells(active, height, width).to(device))
            n = self.subjects[active[0]].tokens.shape[0]
            acting = cells & gate[:, None]
            bias = ms_diffusion.attention_bias(acting, n, self.adapter.module.spec.dummy_tokens)
            return bias.to(dtype), acting.any(dim=0).to(dtype)
        return self.per_forward(extra_options, ("ms_masks", tuple(active), height, width, device, dtype), make)

    def rows(self, roles, batch, device):
        """Batch rows whose chunk carries the subject, and their chunk role index (0 subject, 1 plain)."""
        def make():
            per = batch // len(roles)
            return torch.tensor([0 if r == SUBJECT else 1 for r in roles for _ in range(per)], device=device)
        return self.cached(("rows", tuple(roles), batch, device), make)

    def subject_rows(self, roles, batch, device):
        """(index of the batch rows that carry the subject, or None when that is every row; count)."""
        def make():
            per = batch // len(roles)
            rows = [k for k, r in enumerate(r for r in roles for _ in range(per)) if r == SUBJECT]
            return (None if len(rows) == batch else torch.tensor(rows, device=device)), len(rows)
        return self.cached(("subject_rows", tuple(roles), batch, device), make)


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
    """attn2 replace patch for one layer key ``(block, id, index)``.

    ``previous``: another pack's patch that was on this 3-tuple key (we took its place: it is called
    instead of the plain text attention). Patches on the 2-tuple key ``(block, id)`` (SD1.5 IPAdapter
    packs) are shadowed by ours whenever they were added: the live one is looked up per sampling."""

    def __init__(self, state: SubjectState, number: int, key: tuple, previous=None, shadowed=None):
        self.state, self.number, self.key, self.previous = state, number, key, previous
        self.shadowed = shadowed                   # the 2-tuple key's patch when Apply ran
        self.callback, self.kwargs = [], []        # the Attn2Replace protocol of other packs

    def add(self, callback, **kwargs):
        self.callback.append(callback)
        self.kwargs.append(kwargs)

    def __deepcopy__(self, memo):
        clone = copy.copy(self)
        clone.callback, clone.kwargs = list(self.callback), [dict(k) for k in self.kwargs]
        clone.previous = copy.deepcopy(self.previous, memo)
        clone.shadowed = copy.deepcopy(self.shadowed, memo)
        return clone

    def _keys_values(self, device, dtype):
        """[2, S, T, hidden]: K and V for (subject, plain) of every subject, computed once."""
        def make():
            adapter = self.state.adapter.module
            with torch.inference_mode():
                tokens = torch.stack([torch.stack([s.tokens, s.plain_tokens]) for s in self.state.subjects], dim=1)
                keys, values = adapter.keys_values(tokens.flatten(0, 1).to(device, dtype), self.number)
            shape = (2, len(self.state.subjects), *keys.shape[1:])
            return keys.reshape(shape), values.reshape(shape)
        return self.state.cached(("kv", self.number, device, dtype), make)

    def image_term(self, q, extra_options):
        eligible = self.state.eligible
        if not eligible:
            return None
        batch, length, _ = q.shape
        roles = branch_roles(extra_options.get("cond_or_uncond", [0]), extra_options.get(BRANCH_TABLE_KEY, BRANCHES_CFG))
        height, width = _grid_shape(extra_options, length)
        regions = self.state.regions(height, width, q.device, q.dtype)          # [S, L]
        keys, values = self._keys_values(q.device, q.dtype)                      # [2, S, T, hidden]
        role_index = self.state.rows(roles, batch, q.device)                     # [B]
        if len(eligible) < len(self.state.subjects):
            index = self.state.index(eligible, q.device)
            regions, keys, values = regions[index], keys[:, index], values[:, index]
        gate = self.state.gate(extra_options, q.device)
        if gate is not None:
            # A subject outside its window gets region weight 0: its term is exactly 0 (x 1 inside: unchanged).
            ungated = regions
            regions = self.state.per_forward(extra_options, ("ip_regions", height, width, q.device, q.dtype),
                                             lambda: ungated * gate.to(ungated.dtype)[:, None])
        return regional_image_attention(q, keys[role_index], values[role_index], regions.t()[None].expand(batch, -1, -1),
                                        extra_options["n_heads"], extra_options.get("attn_precision"))

    def __call__(self, q, k, v, extra_options):
        live = extra_options.get(OUTER_REPLACES_KEY)
        shadowed = live.get(self.key[:2]) if live is not None else self.shadowed
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        elif shadowed is not None:
            out = shadowed(q, k, v, extra_options)
        else:
            out = comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                                      attn_precision=extra_options.get("attn_precision"),
                                                      transformer_options=extra_options)
        term = self.image_term(q, extra_options)
        if term is not None:
            out = out + term
        if self.callback:
            sigmas = extra_options.get("sigmas")
            for callback, kwargs in zip(self.callback, self.kwargs):
                low, high = kwargs.get("sigma_end", -1e9), kwargs.get("sigma_start", 1e9)
                if sigmas is None:
                    if low <= 999999999.9 <= high:
                        out = out + callback(out, q, k, v, extra_options, **kwargs)
                    continue
                # σ window compared on the device (no host read per layer); outside it, out is kept as is.
                sigma = _step_sigma(sigmas, out.device)
                inside = (sigma >= _float32_bound(low, False)) & (sigma <= _float32_bound(high, True))
                out = torch.where(inside, out + callback(out, q, k, v, extra_options, **kwargs), out)
        return out.to(q.dtype)

    def set_new_condition(self, **kwargs):
        raise RuntimeError("an older IPAdapter node tried to add itself to a layer that 'Apply Subject Reference' "
                           "already patches; put that IPAdapter node before 'Apply Subject Reference' in the graph")


class MSAttention(IPAttention):
    """attn2 replace patch of the MS-Diffusion backend: the text attention (or the patch it wraps), plus
    the joint masked image attention on the batch rows whose branch carries the subjects."""

    def _ms_keys_values(self, active, device, dtype):
        """K [4 + 16 S, hidden], V with each column's weight (scale x subject weight) applied, once per layer."""
        def make():
            module = self.state.adapter.module
            with torch.inference_mode():
                # the adapter may sit on the GPU with the UNet, the subjects' tokens on the CPU
                tokens = torch.cat([module.dummy_image_tokens[0].to(device, torch.float32)] +
                                   [self.state.subjects[i].tokens.to(device, torch.float32) for i in active]).to(dtype)
                keys, values = module.keys_values(tokens, self.number)
                n = self.state.subjects[active[0]].tokens.shape[0]
                weights = [self.state.scale * self.state.subjects[i].weight for i in active]
                columns = ms_diffusion.column_weights(weights, n, module.spec.dummy_tokens).to(device, values.dtype)
                return keys, values * columns[:, None]
        return self.state.cached(("ms_kv", self.number, tuple(active), device, dtype), make)

    def image_term(self, q, extra_options):
        active = self.state.eligible
        if not active or self.state.scale == 0:
            return None
        batch, length, _ = q.shape
        roles = branch_roles(extra_options.get("cond_or_uncond", [0]), extra_options.get(BRANCH_TABLE_KEY, BRANCHES_CFG))
        selected, count = self.state.subject_rows(roles, batch, q.device)
        if count == 0:
            return None                                    # the negative branch: no image term
        height, width = _grid_shape(extra_options, length)
        bias, inside, inside_rows = self.state.ms_masks(active, height, width, q.device, q.dtype)
        gate = self.state.gate(extra_options, q.device)
        if gate is not None:
            # the rows stay those inside any eligible box (a superset: rows of a subject outside its
            # window come out as background, 0)
            bias, inside = self.state.ms_gated_masks(extra_options, gate, active, height, width, q.device, q.dtype)
        keys, values = self._ms_keys_values(active, q.device, q.dtype)
        rows = q if selected is None else q[selected]
        term = ms_diffusion.joint_masked_attention(rows, keys, values, bias, inside, extra_options["n_heads"],
                                                   extra_options.get("attn_precision"), rows=inside_rows)
        if selected is None:
            return term
        return torch.zeros_like(q).index_copy(0, selected, term.to(q.dtype))


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
        """([1, N, M] bool: query sees grounding token, [1, N, 1] union region x weight, index of the
        visual rows inside the union), once per resolution."""
        def make():
            regions = self.state.regions(height, width, device, torch.float32)[list(active)]      # [S, N]
            n_patch = self.state.subjects[active[0]].tokens.shape[0]
            visible = (regions > 0).t().repeat_interleave(n_patch, dim=1)                   # [N, S*n_patch]
            union = regions.sum(dim=0)        # overlaps already scaled: sum_s w_s R_s
            inside = torch.nonzero(union).flatten()
            # One subject: every computed row (inside its region) sees all its tokens, so no mask,
            # which lets the attention take its fast unmasked kernels.
            return (visible[None] if len(active) > 1 else None), union[None, :, None].to(dtype), inside
        return self.state.cached(("visible", tuple(active), height, width, device, dtype), make)

    def _gated_visibility(self, extra_options, gate, active, height, width, device, dtype):
        """``_visibility`` with only the subjects ``gate`` (on the device) lets act, once per forward: the
        others' grounding tokens are hidden from every query and their region weight is 0 (the rows
        computed stay those inside any eligible region; outside every acting one the update is 0)."""
        def make():
            visible, _, _ = self._visibility(active, height, width, device, dtype)
            regions = self.state.regions(height, width, device, torch.float32)[list(active)]     # [S, N]
            if visible is not None:
                n_patch = self.state.subjects[active[0]].tokens.shape[0]
                visible = visible & gate.repeat_interleave(n_patch)[None, None, :]
            union = (regions * gate.to(regions.dtype)[:, None]).sum(dim=0)
            return visible, union[None, :, None].to(dtype)
        return self.state.per_forward(extra_options, ("visible", tuple(active), height, width, device, dtype), make)

    def __call__(self, x, extra_options):
        block = extra_options.get("block")
        path = self.paths.get((block[0], block[1], extra_options.get("block_index", 0))) if block else None
        active = self.state.eligible
        if path is None or not active:
            return x
        roles = branch_roles(extra_options.get("cond_or_uncond", [0]), extra_options.get(BRANCH_TABLE_KEY, BRANCHES_CFG))
        selected, count = self.state.subject_rows(roles, x.shape[0], x.device)
        if count == 0:
            return x
        height, width = _grid_shape(extra_options, x.shape[1])
        fuser = self.state.adapter.module.fuser_by_path[path]
        objs = self._objs(active, x.device, x.dtype)
        visible, region, inside = self._visibility(active, height, width, x.device, x.dtype)
        gate = self.state.gate(extra_options, x.device)
        if gate is not None:
            visible, region = self._gated_visibility(extra_options, gate, active, height, width, x.device, x.dtype)
        xs = x if selected is None else x[selected]
        ys = fuser(xs, objs.expand(xs.shape[0], -1, -1), visible, region, rows=inside)
        return ys if selected is None else x.index_copy(0, selected, ys)

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
        active = self.state.eligible
        if not active:
            return h
        roles = branch_roles(transformer_options.get("cond_or_uncond", [0]),
                             transformer_options.get(BRANCH_TABLE_KEY, BRANCHES_CFG))
        rows = self.state.rows(roles, h.shape[0], h.device)
        height, width = h.shape[-2:]
        conv = self.state.adapter.module.mask_in

        def make():
            region = self.state.regions(height, width, h.device, torch.float32)[list(active)]
            mask = (region > 0).any(dim=0).float().reshape(1, 1, height, width)
            return conv(mask.to(conv.weight.dtype)).to(h.dtype)
        gate = self.state.gate(transformer_options, h.device)
        if gate is None:
            added = self.state.cached(("mask_in", tuple(active), height, width, h.device, h.dtype), make)
        else:
            # once per forward, on the device: the mask of the subjects acting now (none: 0 added)
            region = self.state.regions(height, width, h.device, torch.float32)[list(active)]
            mask = ((region > 0) & gate[:, None]).any(dim=0).float().reshape(1, 1, height, width)
            added = conv(mask.to(conv.weight.dtype)).to(h.dtype) * gate.any().to(h.dtype)
        return h + added * (rows == 0).to(h.dtype)[:, None, None, None]


def _outer_sample_wrapper(executor, *args, **kwargs):
    """Once per sampling, into this sampling's copy of the options: which cond index is which branch
    (explicit table), the model's σ scale, and the 2-tuple attn2 replaces our keys shadow."""
    guider = executor.class_obj
    names = set(getattr(guider, "original_conds", {}) or {})
    options = getattr(guider, "model_options", None)
    if isinstance(options, dict):
        transformer_options = options.setdefault("transformer_options", {})
        transformer_options[BRANCH_TABLE_KEY] = table_for_guider(names)
        transformer_options[SAMPLING_KEY] = guider.model_patcher.get_model_object("model_sampling")
        replaces = transformer_options.get("patches_replace", {}).get("attn2", {})
        transformer_options[OUTER_REPLACES_KEY] = {key: patch for key, patch in replaces.items() if len(key) == 2}
    return executor(*args, **kwargs)


def apply_subjects(model, adapter, subjects, scale: float = 1.0):
    """A clone of ``model`` with ``subjects`` acting through ``adapter`` (``scale``: MS-Diffusion's)."""
    keys = check_fits(adapter, model)
    state = SubjectState(adapter, subjects, scale if adapter.backend == BACKEND_MS else 1.0)
    patched = model.clone()
    if adapter.backend in (BACKEND_IP, BACKEND_MS):
        kind = MSAttention if adapter.backend == BACKEND_MS else IPAttention
        replaces = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
        for key, number in ip_layer_numbers(keys).items():
            patched.set_model_attn2_replace(kind(state, number, key, replaces.get(key), replaces.get(key[:2])), *key)
    else:
        patched.set_model_patch(GroundingPatch(state, {key: block_path(path) for key, path in keys.items()}),
                                "middle_patch")
        patched.set_model_input_block_patch(LocationMaskPatch(state))
    attached = list(patched.get_additional_models_with_key(ADDITIONAL_MODELS_KEY))
    if all(m.model is not adapter.module for m in attached):      # clone() clones them: compare modules
        patched.set_additional_models(ADDITIONAL_MODELS_KEY, attached + [adapter.patcher])
    wrappers = comfy.patcher_extension.WrappersMP
    patched.remove_wrappers_with_key(wrappers.OUTER_SAMPLE, WRAPPER_KEY)
    patched.add_wrapper_with_key(wrappers.OUTER_SAMPLE, WRAPPER_KEY, _outer_sample_wrapper)
    return patched
