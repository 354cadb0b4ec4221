"""Host tests: what the pack creates follows the model's device and dtype, and its sampling path never
waits for the device (issue 13's audit, checked on the CPU as far as a CPU can).

Three kinds of check:

* **The meta device as a stand-in GPU.** The UNet (and a subject adapter) is moved to torch's ``meta``
  device after one ordinary forward, and a sampling step runs there. A meta tensor has no values: any
  host read on the sampling path (``.item()``, ``float()``, ``bool()``, ``.tolist()``, ``nonzero``) raises,
  and an elementwise op between a meta tensor and a tensor the pack left on the CPU raises too. So a
  forward that completes on meta reads nothing per step and uses nothing from the wrong device (the
  first forward after a change may read once: that is what the ordinary forward before it is for).
* **Another dtype than the pack's tensors.** The pack keeps concepts in float32; the UNet runs in
  float16 / bfloat16, stored or cast (manual cast): the edit must run in the model's dtype and give
  what the float32 model gives, within that dtype's precision.
* **Nothing left behind after an offload.** Every tensor a concept stack holds is found by walking the
  object; after ComfyUI ejects the edit (unload, offload, another clone), none is on the model's device.

Under PERFUSION_TEST_DEVICE=cuda (scripts/device-check.sh) the same tests run with the model on the GPU,
and the CUDA-only tests at the end count device syncs with torch.cuda.set_sync_debug_mode and sample
through an offload / partial-load cycle.
"""

import copy
import warnings

import pytest
import torch

import host  # skips this module without COMFYUI_PATH
import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.sampler_helpers
from concept_factory import random_covariance

pack = host.load_pack()
model_patch = pack.nodes.model_patch
GateSettings = pack.core.gate_settings.GateSettings
SUPER_CONTEXT_KEY = pack.core.concept_stack.SUPER_CONTEXT_KEY
CUDA = host.DEVICE == "cuda"
META = torch.device("meta")


# ------------------------------------------------------------------------------------------------
# helpers

def tensors_in(obj, seen=None, path="", depth=0):
    """(path, tensor) for every tensor reachable from ``obj`` through attributes, dicts, lists and
    tuples (modules and functions are not entered: the stack holds none of its own)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 12:
        return []
    seen.add(id(obj))
    if torch.is_tensor(obj):
        return [(path, obj)]
    if isinstance(obj, (torch.nn.Module, type, str, bytes, int, float, bool)) or callable(obj) and not hasattr(obj, "__dict__"):
        return []
    found = []
    if isinstance(obj, dict):
        items = [(f"{path}[{k!r}]", v) for k, v in obj.items()] + [(f"{path}<key>", k) for k in obj]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    elif hasattr(obj, "__dict__"):
        items = [(f"{path}.{k}", v) for k, v in vars(obj).items()]
    else:
        items = []
    for p, v in items:
        found += tensors_in(v, seen, p, depth + 1)
    return found


def concepts_for(model, clip, triggers=("sks",)):
    C = random_covariance(host.SD15_CONTEXT, 3)
    return [host.concept_for(pack, model, clip, trigger=t, seed=k, covariance=C) for k, t in enumerate(triggers)]


def patched_model(model, clip, triggers=("sks",), **gate):
    patched = model
    for concept in concepts_for(model, clip, triggers):
        patched = model_patch.apply_concept(patched, concept, 1.0)
    if gate:
        patched = model_patch.set_gate(patched, "", GateSettings(**gate))
    return patched


def sampler_options(model, sigma):
    """The transformer_options a sampler hands apply_model (wrappers merged, as CFGGuider does)."""
    options = copy.deepcopy(model.model_options)
    options.setdefault("transformer_options", {})
    comfy.sampler_helpers.prepare_model_patcher(model, {}, options)
    to = options["transformer_options"]
    to["sigmas"] = sigma
    to["cond_or_uncond"] = [0]
    return to


def step(model, device, dtype=torch.float32, context_width=host.SD15_CONTEXT, sigma=5.0, superclass=False,
         load=True, **extra_to):
    """One denoiser call on ``device`` with inputs made there, as a sampling step makes it (the model
    loaded first, as a sampler does, except on meta: it stays loaded, and injected, from before)."""
    if device != META and load:
        comfy.model_management.load_models_gpu([model])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g).to(device)
    context = torch.randn(1, 77, context_width, generator=g).to(device, dtype)
    t = torch.full((1,), sigma, device=device)
    to = sampler_options(model, t)
    to.update(extra_to)
    if device == META:         # ComfyUI's CPU attention asks the device for free memory; SDPA does not
        to["optimized_attention_override"] = lambda func, *a, **kw: comfy_attention.attention_pytorch(*a, **kw)
    extra = {SUPER_CONTEXT_KEY: context.flip(1)} if superclass else {}
    with torch.inference_mode():
        return model.model.apply_model(x, t, c_crossattn=context, transformer_options=to, **extra)


def to_meta(model):
    """Moves the (fresh, test-only) model to the meta device; its values are gone for good."""
    model.model.to(META)


# ------------------------------------------------------------------------------------------------
# the sampling path, on the meta device

EDITS = {
    "one concept": dict(triggers=("sks",)),
    "two concepts": dict(triggers=("sks", "ohwx")),
    "scheduled window": dict(triggers=("sks",), start_percent=0.2, end_percent=0.8),
    "global key lock": dict(triggers=("sks", "ohwx"), key_lock="global", superclass=True),
    "scheduled, global key lock": dict(triggers=("sks",), key_lock="global", start_percent=0.3, superclass=True),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_sampling_step_reads_nothing_on_the_host_and_stays_on_the_model_device(edit):
    """Per step, the edit never reads a tensor value on the host (no device sync) and never mixes a
    tensor of another device in: it runs on meta tensors to the end. Before the fix, a scheduled
    concept read the step's sigma with float(t.max()) in every forward."""
    spec = dict(EDITS[edit])
    triggers, superclass = spec.pop("triggers"), spec.pop("superclass", False)
    model, clip = host.tiny_model("sd1"), host.tiny_clip("sd1")
    patched = patched_model(model, clip, triggers, **spec)
    first = step(patched, patched.load_device, superclass=superclass)       # one-off reads happen here
    assert torch.isfinite(first).all()
    to_meta(patched)
    for sigma in (5.0, 0.5):               # inside and outside a window
        out = step(patched, META, sigma=sigma, superclass=superclass)
        assert out.device == META and out.shape == first.shape
    stack = model_patch.concept_stack(patched)
    on_meta = [p for p, t in tensors_in(stack) if t.device == META]
    assert on_meta, "the walk found none of the stack's device copies: the check would be vacuous"


def test_a_forward_outside_every_window_equals_the_base_model_bit_for_bit():
    """The window is applied on the device (strength x inside): outside it the edit has lambda = 0, which
    gives the plain K and V exactly; the host-side plan gave None (no edit) there. Same result."""
    model, clip = host.tiny_model("sd1"), host.tiny_clip("sd1")
    for key_lock in ("local", "global"):
        late = patched_model(model, clip, ("sks",), start_percent=0.6, key_lock=key_lock)
        sampling = late.get_model_object("model_sampling")
        high = float(sampling.percent_to_sigma(0.1))
        assert torch.equal(step(late, late.load_device, sigma=high, superclass=True).cpu(),
                           step(model, model.load_device, sigma=high).cpu())
        low = float(sampling.percent_to_sigma(0.9))
        always = patched_model(model, clip, ("sks",), key_lock=key_lock)
        assert torch.equal(step(late, late.load_device, sigma=low, superclass=True).cpu(),
                           step(always, always.load_device, sigma=low, superclass=True).cpu())


def test_offloading_the_model_leaves_no_stack_tensor_on_its_device():
    """ComfyUI ejects the edit when it unloads / offloads the model or loads another clone; then the
    stack keeps only its CPU originals (the copies for the model's device are made again next time)."""
    model, clip = host.tiny_model("sd1"), host.tiny_clip("sd1")
    patched = patched_model(model, clip, ("sks", "ohwx"), start_percent=0.1)
    step(patched, patched.load_device)
    to_meta(patched)
    step(patched, META)
    stack = model_patch.concept_stack(patched)
    assert any(t.device == META for _, t in tensors_in(stack))
    patched.eject_model()
    left = [p for p, t in tensors_in(stack) if t.device != torch.device("cpu")]
    assert left == [], f"tensors left on the model's device after eject: {left[:5]}"


def test_device_copies_are_keyed_by_the_device_they_are_on():
    """Each cached copy is found under the device (and dtype) it lives on, so a forward on one device
    can never be served a copy made for another."""
    model, clip = host.tiny_model("sd1"), host.tiny_clip("sd1")
    patched = patched_model(model, clip, ("sks", "ohwx"), start_percent=0.1)
    step(patched, patched.load_device)
    to_meta(patched)
    step(patched, META)
    stack = model_patch.concept_stack(patched)
    for (_, device), basis in stack._bases.items():
        assert {t.device for _, t in tensors_in(basis)} == {torch.device(device)}
    for (_, _, device, dtype), targets in stack._targets.items():
        assert (targets.device, targets.dtype) == (torch.device(device), dtype)
    for plan in stack._plans.values():
        for device, cached in plan._on_device.items():
            assert {t.device for _, t in tensors_in(cached)} == {torch.device(device)}


# ------------------------------------------------------------------------------------------------
# the model in another dtype than the pack's tensors

DTYPES = {"float16": (torch.float16, None), "bfloat16": (torch.bfloat16, None),
          "float16 weights, float32 compute": (torch.float16, torch.float32)}


@pytest.mark.parametrize("name", list(DTYPES))
def test_the_edit_runs_in_the_model_dtype_and_matches_float32(name):
    """Concepts are float32; a half-precision UNet (stored, or manual-cast) gets K and V in its own
    compute dtype, and the edit's effect on every value projection (which sees only the context, so
    the layers are compared one by one) is the float32 model's within that dtype's precision."""
    stored, compute = DTYPES[name]
    run_dtype = compute or stored
    model, clip = host.tiny_model("sd1", dtype=stored), host.tiny_clip("sd1")
    if compute is not None:
        model = model.clone()
        model.set_model_compute_dtype(compute)
    reference = host.tiny_model("sd1")              # the same seed: the float32 weights before the cast
    concept = concepts_for(reference, clip)[0]

    def value_outputs(m, dtype):
        seen = []
        comfy.model_management.load_models_gpu([m])
        handles = [layer.to_v.register_forward_hook(lambda mod, a, out: seen.append(out))
                   for layer in model_patch.cross_attention_layers(m).values()]
        try:
            out = step(m, m.load_device, dtype=dtype)
        finally:
            for h in handles:
                h.remove()
        assert torch.isfinite(out).all()
        return seen
    half = value_outputs(model_patch.apply_concept(model, concept, 1.0), run_dtype)
    assert {o.dtype for o in half} == {run_dtype}, f"value projections ran in {({o.dtype for o in half})}, not {run_dtype}"
    half_base = value_outputs(model, run_dtype)
    full = value_outputs(model_patch.apply_concept(reference, concept, 1.0), torch.float32)
    full_base = value_outputs(reference, torch.float32)
    tolerance = {torch.float16: 0.01, torch.bfloat16: 0.05, torch.float32: 0.01}[run_dtype]
    for k, (e, b, fe, fb) in enumerate(zip(half, half_base, full, full_base)):
        edit, ref_edit = (e.float() - b.float()).cpu(), (fe - fb).cpu()
        assert ref_edit.norm() > 0
        error = (edit - ref_edit).norm() / ref_edit.norm()
        assert error <= tolerance, f"layer {k}: the edit in {run_dtype} is off by {error:.3g} of the float32 edit"


# ------------------------------------------------------------------------------------------------
# subject references (core/subject*.py, nodes/subject*.py: the issue-12 owner's files)

@pytest.fixture
def ip_subjects(tmp_path_factory):
    """A fresh adapter per test (the meta test moves its adapter to the meta device for good)."""
    from safetensors.torch import save_file
    from subject_factory import ip_state_dict, reference_image
    model = host.tiny_model("sd1")
    folder = tmp_path_factory.mktemp("ipadapter")
    path = str(folder / "ip-plus_sd15.safetensors")
    save_file({k: v.half() for k, v in ip_state_dict(pack, model, "plus", seed=3).items()}, path)
    adapter = pack.nodes.subject_adapter.load_adapter(path, "ip-plus_sd15.safetensors")
    image, mask = reference_image(0)
    vision = host.tiny_clip_vision()
    Encoder = pack.nodes.SubjectReferenceEncoder
    one = Encoder().encode(vision, adapter, image, 0.0, 0.0, 0.5, 1.0, 1.0, 0.2, 0.8, subject_mask=mask)[0]
    two = Encoder().encode(vision, adapter, image, 0.5, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0, subject_mask=mask, subjects=one)[0]
    return adapter, two


def test_a_subject_sampling_step_reads_nothing_on_the_host(ip_subjects):
    """The subjects' time windows are applied on the device (region weight 0 outside): before the fix,
    SubjectState.active read the step's sigma with float(sigmas.flatten()[0]) once per forward."""
    adapter, subjects = ip_subjects
    model = host.tiny_model("sd1")
    patched = pack.nodes.SubjectReferenceApply().apply(model, adapter, subjects)[0]
    sampling = patched.get_model_object("model_sampling")
    key = pack.nodes.subject_patch.SAMPLING_KEY
    step(patched, patched.load_device, **{key: sampling})
    to_meta(patched)
    adapter.module.to(META)
    for sigma in (5.0, 0.5, 0.01):
        out = step(patched, META, sigma=sigma, **{key: sampling})
        assert out.device == META


def test_a_subject_outside_its_window_gives_the_output_without_it(ip_subjects):
    """Subject 1 acts on 20-80 % of the schedule, subject 2 on all of it. Outside subject 1's window a step
    gives what subject 2 alone gives; inside it, what the host-side check gave (both act: no gating)."""
    adapter, subjects = ip_subjects
    assert (subjects[0].start_percent, subjects[0].end_percent, subjects[1].start_percent) == (0.2, 0.8, 0.0)
    model = host.tiny_model("sd1")
    Apply = pack.nodes.SubjectReferenceApply
    both, alone = Apply().apply(model, adapter, subjects)[0], Apply().apply(model, adapter, subjects[1:])[0]
    sampling = both.get_model_object("model_sampling")
    key = pack.nodes.subject_patch.SAMPLING_KEY
    run = lambda m, s, **kw: step(m, m.load_device, sigma=s, **kw).cpu()  # noqa: E731
    for percent in (0.1, 0.9):
        sigma = float(sampling.percent_to_sigma(percent))
        assert torch.equal(run(both, sigma, **{key: sampling}), run(alone, sigma, **{key: sampling}))
    inside = float(sampling.percent_to_sigma(0.5))
    assert torch.equal(run(both, inside, **{key: sampling}), run(both, inside))      # no sampling: no window
    assert not torch.equal(run(both, inside, **{key: sampling}), run(alone, inside, **{key: sampling}))


# ------------------------------------------------------------------------------------------------
# on the GPU only (scripts/device-check.sh runs this file with PERFUSION_TEST_DEVICE=cuda)

cuda_only = pytest.mark.skipif(not CUDA, reason="needs PERFUSION_TEST_DEVICE=cuda and a CUDA GPU "
                                                "(scripts/device-check.sh runs it there)")


def _syncs(fn):
    """How many device syncs ``fn`` causes (torch.cuda.set_sync_debug_mode warns on each)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return len([w for w in caught if "synchroniz" in str(w.message).lower()])


@cuda_only
@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_a_sampling_step_adds_no_device_sync(edit, dtype):
    spec = dict(EDITS[edit])
    triggers, superclass = spec.pop("triggers"), spec.pop("superclass", False)
    model, clip = host.tiny_model("sd1", dtype=dtype), host.tiny_clip("sd1")
    patched = patched_model(model, clip, triggers, **spec)
    for m in (model, patched):
        step(m, m.load_device, dtype=dtype, superclass=superclass)          # warm: loads, one-off reads
    base = _syncs(lambda: step(model, model.load_device, dtype=dtype))
    edited = _syncs(lambda: step(patched, patched.load_device, dtype=dtype, superclass=superclass))
    assert edited <= base, f"{edited} syncs per step with the edit, {base} without"


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_sampling_survives_offload_and_partial_load(dtype):
    """KSampler on the GPU, the model unloaded to the CPU between runs: the same image each time, no stack
    tensor left on the GPU after the unload. Then a step with the model loaded partially (lowvram: most
    weights stay on the CPU, cast per forward) gives the fully loaded step's output. Base weights untouched."""
    import nodes as comfy_nodes
    model, clip = host.tiny_model("sd1", dtype=dtype), host.tiny_clip("sd1")
    before = host.state_hash(model.model)
    patched = patched_model(model, clip, ("sks", "ohwx"), start_percent=0.1)
    cond = [[torch.randn(1, 77, host.SD15_CONTEXT, generator=torch.Generator().manual_seed(1)), {}]]
    uncond = [[torch.zeros(1, 77, host.SD15_CONTEXT), {}]]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}

    def sample():
        return comfy_nodes.common_ksampler(patched, 3, 3, 5.0, "euler", "normal", cond, uncond, latent)[0]["samples"]
    first = sample()
    comfy.model_management.unload_all_models()
    stack = model_patch.concept_stack(patched)
    left = [p for p, t in tensors_in(stack) if t.device.type == "cuda"]
    assert left == [], left[:5]
    assert torch.equal(sample(), first)
    full = step(patched, patched.load_device, dtype=dtype).cpu()
    comfy.model_management.unload_all_models()
    patched.patch_model(device_to=patched.load_device, lowvram_model_memory=64 * 1024, load_weights=True)
    try:
        assert patched.model.model_lowvram
        partial = step(patched, patched.load_device, dtype=dtype, load=False).cpu()
    finally:
        patched.unpatch_model(device_to=patched.offload_device)
    tolerance = 1e-3 if dtype == torch.float16 else 1e-5
    assert torch.allclose(partial, full, atol=tolerance), (partial - full).abs().max()
    comfy.model_management.unload_all_models()
    assert host.state_hash(model.model) == before
