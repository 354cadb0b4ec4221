"""Host tests: the two nodes on a tiny SD1.5-shaped model in the real ComfyUI (ModelPatcher, CLIP, KSampler)."""

import pytest

import host  # skips this module without COMFYUI_PATH
import torch

import comfy.lora
import comfy.model_management
import folder_paths
import nodes as comfy_nodes

pack = host.load_pack()
write_concept = pack.core.concept_file.write_concept
ConceptError = pack.core.errors.ConceptError
Load = pack.nodes.PerfusionLoadConcept
Gate = pack.nodes.PerfusionGateStrength
model_patch = pack.nodes.model_patch


@pytest.fixture(scope="module")
def base():
    return host.tiny_model("sd1"), host.tiny_clip("sd1")


@pytest.fixture(scope="module")
def concept_dir(tmp_path_factory, base):
    folder = tmp_path_factory.mktemp("perfusion")
    folder_paths.add_model_folder_path("perfusion", str(folder))
    model, clip = base
    from concept_factory import random_covariance
    C = random_covariance(host.SD15_CONTEXT, 11)
    for k, trigger in enumerate(("sks", "ohwx", "qpr")):
        write_concept(str(folder / f"{trigger}.safetensors"),
                      host.concept_for(pack, model, clip, trigger=trigger, seed=k, covariance=C), dtype=torch.float32)
    return folder


def load(model, clip, name="sks.safetensors", strength=1.0):
    return Load().load(model, clip, name, strength)


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def context(clip, *texts):
    return torch.cat([clip.encode_from_tokens(clip.tokenize(t)) for t in texts])


def test_nodes_are_registered_with_their_contract():
    assert set(pack.NODE_CLASS_MAPPINGS) == {"PerfusionLoadConcept", "PerfusionGateStrength", "PerfusionTrainConcept",
                                             "PerfusionGateSweep", "SubjectReferenceLoader", "SubjectReferenceEncoder",
                                             "SubjectReferenceApply", "SubjectReferenceTextEncode",
                                             "SubjectReferenceTrain"}
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["PerfusionLoadConcept"] == "Load Rank-1 Concept"
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["PerfusionGateStrength"] == "Gate Strength"
    load_inputs = Load.INPUT_TYPES()["required"]
    assert list(load_inputs) == ["model", "clip", "concept_name", "strength"]
    assert load_inputs["strength"][1]["default"] == 1.0
    gate_inputs = Gate.INPUT_TYPES()["required"]
    assert list(gate_inputs) == ["model", "trigger", "beta", "tau", "strength", "key_lock", "start_percent", "end_percent"]
    assert gate_inputs["key_lock"][0] == ["local", "global"]
    assert all(spec[1].get("tooltip") for spec in {**load_inputs, **gate_inputs}.values())
    assert "perfusion" in folder_paths.folder_names_and_paths


def test_concept_list_comes_from_folder_paths(concept_dir):
    assert {"sks.safetensors", "ohwx.safetensors"} <= set(Load.INPUT_TYPES()["required"]["concept_name"][0])


def test_every_cross_attention_layer_is_edited_exactly_once_per_forward(base, concept_dir):
    model, clip = base
    patched, patched_clip = load(model, clip)
    calls, edited = {}, {}
    layers = model_patch.cross_attention_layers(patched)
    assert len(layers) == 16

    def hook(name):
        def record(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            plain = torch.nn.functional.linear(inputs[0], module.weight)
            edited[name] = not torch.equal(plain, output)
        return record
    handles = [getattr(m, proj).register_forward_hook(hook(f"{p}.{proj}"))
               for p, m in layers.items() for proj in ("to_k", "to_v")]
    try:
        host.unet_output(patched, context(patched_clip, "a photo of sks dog", "blurry"))
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == 32 and set(calls.values()) == {1}
    assert all(edited.values())


def test_strength_zero_is_bit_identical_to_the_base_model(base, concept_dir):
    model, clip = base
    ctx = context(clip, "a photo of a dog", "")
    reference = host.unet_output(model, ctx)
    off, _ = load(model, clip, strength=0.0)
    assert torch.equal(host.unet_output(off, ctx), reference)
    on, _ = load(model, clip)
    assert not torch.equal(host.unet_output(on, ctx), reference)
    gated_off = Gate().apply(on, "", 0.7, 0.15, 0.0, "local", 0.0, 1.0)[0]
    assert torch.equal(host.unet_output(gated_off, ctx), reference)
    # the base model is untouched by all of this
    assert torch.equal(host.unet_output(model, ctx), reference)


def test_trigger_word_gets_the_learned_embedding(base, concept_dir, tmp_path):
    model, clip = base
    _, patched_clip = load(model, clip)
    concept = pack.core.concept_file.read_concept(str(concept_dir / "sks.safetensors"))
    # ComfyUI's own textual-inversion route with the same vector is the independent reference.
    from safetensors.torch import save_file
    save_file({"clip_l": concept.embeddings["clip_l"]}, str(tmp_path / "learned.safetensors"))
    reference_clip = host.tiny_clip("sd1")
    reference_clip.tokenizer = type(reference_clip.tokenizer)(embedding_directory=[str(tmp_path)])
    long_tail = " ".join(["red"] * 80)
    for ours, theirs in [("a photo of sks dog", "a photo of embedding:learned dog"),
                         ("a (sks:1.2) on a beach", "a (embedding:learned:1.2) on a beach"),
                         (f"{long_tail} sks, in snow", f"{long_tail} embedding:learned, in snow")]:
        a = patched_clip.encode_from_tokens(patched_clip.tokenize(ours))
        b = reference_clip.encode_from_tokens(reference_clip.tokenize(theirs))
        assert a.shape == b.shape and torch.equal(a, b), ours
    tokens = patched_clip.tokenize("a photo of sks dog")["l"][0]
    assert [k for k, t in enumerate(tokens) if torch.is_tensor(t[0])] == [4]     # BOS a photo of [sks] dog
    # prompts without the trigger, and the input CLIP, are unchanged
    for text in ("a photo of a dog", ""):
        assert torch.equal(patched_clip.encode_from_tokens(patched_clip.tokenize(text)),
                           clip.encode_from_tokens(clip.tokenize(text)))
    assert not any(torch.is_tensor(t[0]) for t in clip.tokenize("a photo of sks dog")["l"][0])


def test_lora_on_to_k_still_applies_and_composes(base, concept_dir):
    model, clip = base
    ctx = context(clip, "a photo of sks dog")
    path = next(iter(model_patch.cross_attention_layers(model)))
    key = f"diffusion_model.{path}.to_k.weight"
    weight = model.get_model_object(f"diffusion_model.{path}.to_k").weight
    delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)) * 0.5

    def lora(m):
        m = m.clone()
        assert m.add_patches({key: (delta,)}, 1.0) == [key]
        return m
    patched = load(model, clip)[0]
    with_lora_after = lora(patched)
    with_lora_before = load(lora(model), clip)[0]
    out_edit = host.unet_output(patched, ctx)
    out_after = host.unet_output(with_lora_after, ctx)
    assert not torch.equal(out_after, out_edit)                      # the LoRA acts
    assert torch.equal(out_after, host.unet_output(with_lora_before, ctx))   # order does not matter
    off_lora = lora(load(model, clip, strength=0.0)[0])
    assert torch.equal(host.unet_output(off_lora, ctx), host.unet_output(lora(model), ctx))


def test_gate_strength_changes_only_model_options(base, concept_dir, monkeypatch):
    model, clip = base
    to_k = "diffusion_model." + next(iter(model_patch.cross_attention_layers(model))) + ".to_k"
    loraed = load(model, clip)[0].clone()
    delta = torch.full_like(model.get_model_object(to_k).weight, 0.01)
    assert loraed.add_patches({to_k + ".weight": (delta,)}, 1.0) == [to_k + ".weight"]
    ctx = context(clip, "a photo of sks dog")
    host.unet_output(loraed, ctx)                                    # weights patched once here
    calls = []
    real = comfy.lora.calculate_weight
    monkeypatch.setattr(comfy.lora, "calculate_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    outputs = []
    for beta in (0.5, 0.9):
        gated = Gate().apply(loraed, "sks", beta, 0.15, 1.0, "local", 0.0, 1.0)[0]
        assert gated.patches.keys() == loraed.patches.keys() and gated.patches_uuid == loraed.patches_uuid
        assert gated.get_injections("perfusion") == loraed.get_injections("perfusion")
        outputs.append(host.unet_output(gated, ctx))
    assert calls == []                                               # no weight was re-patched
    assert not torch.equal(outputs[0], outputs[1])


def test_gate_settings_replace_the_loaded_ones(base, concept_dir):
    model, clip = base
    patched = load(model, clip, strength=0.5)[0]
    settings = model_patch.gate_settings(patched)["sks"]
    assert (settings.strength, settings.beta, settings.tau) == (0.5, 0.7, 0.15)
    gated = Gate().apply(patched, "", 0.6, 0.2, 1.5, "global", 0.1, 0.9)[0]
    s = model_patch.gate_settings(gated)["sks"]
    assert (s.strength, s.beta, s.tau, s.key_lock, s.start_percent, s.end_percent) == (1.5, 0.6, 0.2, "global", 0.1, 0.9)
    assert model_patch.gate_settings(patched)["sks"].strength == 0.5     # the input model keeps its own


def test_schedule_window_turns_the_concept_off_outside_it(base, concept_dir):
    model, clip = base
    ctx = context(clip, "a photo of sks dog")
    patched = load(model, clip)[0]
    late_only = Gate().apply(patched, "sks", 0.7, 0.15, 1.0, "local", 0.5, 1.0)[0]
    sigmas = patched.get_model_object("model_sampling")
    high, low = sigmas.percent_to_sigma(0.1), sigmas.percent_to_sigma(0.9)
    assert torch.equal(host.unet_output(late_only, ctx, sigma=high), host.unet_output(model, ctx, sigma=high))
    assert torch.equal(host.unet_output(late_only, ctx, sigma=low), host.unet_output(patched, ctx, sigma=low))


def test_two_and_three_concepts_combine_on_one_model(base, concept_dir):
    model, clip = base
    m, c = load(model, clip, "sks.safetensors")
    m, c = load(m, c, "ohwx.safetensors")
    m3, c3 = load(m, c, "qpr.safetensors")
    stack = model_patch.concept_stack(m3)
    assert stack.triggers == ("sks", "ohwx", "qpr")
    ctx = context(c3, "sks and ohwx and qpr")
    out = host.unet_output(m3, ctx)
    assert torch.isfinite(out).all()
    # only one injection and one wrapper however many concepts
    assert len(m3.get_injections("perfusion")) == 1
    assert len(m3.get_wrappers("apply_model", "perfusion")) == 1
    with pytest.raises(ConceptError, match="already uses"):
        load(m3, c3, "ohwx.safetensors")


def test_ksampler_runs_with_the_concept(base, concept_dir):
    model, clip = base
    patched, patched_clip = load(model, clip)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    args = dict(seed=1, steps=2, cfg=7.0, sampler_name="euler", scheduler="normal", latent=latent)
    with torch.inference_mode():
        ours = comfy_nodes.common_ksampler(patched, positive=encode(patched_clip, "a photo of sks dog"),
                                           negative=encode(patched_clip, "blurry"), **args)[0]["samples"]
        plain = comfy_nodes.common_ksampler(model, positive=encode(clip, "a photo of sks dog"),
                                            negative=encode(clip, "blurry"), **args)[0]["samples"]
    assert torch.isfinite(ours).all() and not torch.equal(ours, plain)


def test_bad_inputs_give_clear_errors_and_change_nothing(base, concept_dir, tmp_path):
    model, clip = base
    before = (dict(model.model_options), dict(model.injections), clip.tokenizer, clip.cond_stage_model)
    (concept_dir / "notes.safetensors").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ConceptError, match="notes.safetensors.*pickle"):
        load(model, clip, "notes.safetensors")
    with pytest.raises(ConceptError, match="'missing.safetensors' not found"):
        load(model, clip, "missing.safetensors")
    xl = host.tiny_model("sdxl")
    xl_clip = host.tiny_clip("sdxl")
    pack.core.concept_file.write_concept(str(concept_dir / "xl.safetensors"),
                                         host.concept_for(pack, xl, xl_clip, trigger="xlc"))
    with pytest.raises(ConceptError, match=r"'xl.safetensors' was made for sdxl \(context 80\); this model is sd1 \(64\)"):
        load(model, clip, "xl.safetensors")
    multi = host.concept_for(pack, model, clip, trigger="hugsyplushie")
    pack.core.concept_file.write_concept(str(concept_dir / "multi.safetensors"), multi)
    with pytest.raises(ConceptError, match="'hugsyplushie' is .* tokens for clip_l"):
        load(model, clip, "multi.safetensors")
    with pytest.raises(ConceptError, match="no Perfusion concept"):
        Gate().apply(model, "", 0.7, 0.15, 1.0, "local", 0.0, 1.0)
    patched = load(model, clip)[0]
    with pytest.raises(ConceptError, match="no concept with trigger 'dog'.*sks"):
        Gate().apply(patched, "dog", 0.7, 0.15, 1.0, "local", 0.0, 1.0)
    with pytest.raises(ConceptError, match="beta is 3.0"):
        Gate().apply(patched, "", 3.0, 0.15, 1.0, "local", 0.0, 1.0)
    assert before == (dict(model.model_options), dict(model.injections), clip.tokenizer, clip.cond_stage_model)
    for name in ("notes", "xl", "multi"):
        (concept_dir / f"{name}.safetensors").unlink()


def test_gate_sweep_renders_a_labelled_grid(base, concept_dir):
    model, clip = base
    patched, patched_clip = load(model, clip)
    vae = host.tiny_vae()
    sweep = pack.nodes.PerfusionGateSweep()
    args = dict(vae=vae, positive=encode(patched_clip, "a photo of sks"), negative=encode(patched_clip, "blurry"),
                latent_image={"samples": torch.zeros(2, 4, 8, 8)}, seed=1, steps=2, cfg=5.0, sampler_name="euler",
                scheduler="normal", trigger="", tau=0.15)
    with torch.inference_mode():
        grid = sweep.sweep(patched, betas="0.3, 0.9", strengths="0.0 1.0", **args)[0]
    assert grid.ndim == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3
    assert grid.shape[1] > 2 * 64 and grid.shape[2] > 2 * 64                 # 2 x 2 cells of 64 px plus labels
    # strength 0 renders the base model in both columns; strength 1 differs with beta
    cells = lambda g: [g[0, -128 + r * 64:-64 + r * 64 or None, -128 + c * 64:-64 + c * 64 or None] for r in (0, 1) for c in (0, 1)]
    off_a, off_b, on_a, on_b = cells(grid)
    assert torch.equal(off_a, off_b) and not torch.equal(on_a, on_b)
    assert model_patch.gate_settings(patched)["sks"].beta == 0.7                # input model untouched
    for bad, message in (({"betas": "0.5, high"}, "'high' is not a number"), ({"betas": "2.5"}, "out of range"),
                         ({"strengths": ""}, "expected a list of numbers")):
        with pytest.raises(ConceptError, match=message):
            sweep.sweep(patched, **{"betas": "0.5", "strengths": "1.0", **bad}, **args)
    with pytest.raises(ConceptError, match="no Perfusion concept"):
        sweep.sweep(model, betas="0.5", strengths="1.0", **args)
