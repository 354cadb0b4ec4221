"""Host tests: the concept edit next to other packs' patches, on SDXL shapes, batching, area conds and lowvram."""

import copy

import pytest

import host  # skips this module without COMFYUI_PATH
import torch

import comfy.model_management
import comfy.sampler_helpers
import folder_paths
import nodes as comfy_nodes
from comfy.ldm.modules.attention import optimized_attention

pack = host.load_pack()
Load = pack.nodes.PerfusionLoadConcept
Gate = pack.nodes.PerfusionGateStrength
model_patch = pack.nodes.model_patch
SUPER_KEY = pack.core.concept_stack.SUPER_CONTEXT_KEY


def loaded(tmp_path_factory, family, **concept_fields):
    """(base model, base clip, patched model, patched clip) with one concept 'sks' on a tiny model."""
    folder = tmp_path_factory.mktemp(f"perfusion_{family}")
    folder_paths.add_model_folder_path("perfusion", str(folder))
    model, clip = host.tiny_model(family), host.tiny_clip(family)
    name = f"{family}_sks.safetensors"
    pack.core.concept_file.write_concept(str(folder / name),
                                         host.concept_for(pack, model, clip, trigger="sks", **concept_fields))
    return (model, clip) + tuple(Load().load(model, clip, name, 1.0))


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return loaded(tmp_path_factory, "sd1", superclass="teddy bear")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return loaded(tmp_path_factory, "sdxl")


def context(clip, *texts):
    return torch.cat([clip.encode_from_tokens(clip.tokenize(t)) for t in texts])


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def test_sdxl_shapes(sdxl):
    model, clip, patched, patched_clip = sdxl
    layers = model_patch.cross_attention_layers(patched)
    assert len(layers) == 28 and model_patch.model_family(patched) == ("sdxl", host.SDXL_L + host.SDXL_G)
    assert any(".transformer_blocks.2.attn2" in p for p in layers)          # deep stacks are covered
    tokens = patched_clip.tokenize("a photo of sks")
    assert all(any(torch.is_tensor(t[0]) for t in tokens[k][0]) for k in ("l", "g"))
    ctx = context(patched_clip, "a photo of sks", "")
    y = torch.randn(2, host.SDXL_POOLED + 6 * 256, generator=torch.Generator().manual_seed(0))
    calls = {}
    handles = [getattr(m, proj).register_forward_hook(lambda mod, i, o, n=f"{p}.{proj}": calls.__setitem__(n, calls.get(n, 0) + 1))
               for p, m in layers.items() for proj in ("to_k", "to_v")]
    try:
        out = host.unet_output(patched, ctx, y=y)
    finally:
        for h in handles:
            h.remove()
    assert set(calls.values()) == {1} and len(calls) == 56
    reference = host.unet_output(model, ctx, y=y)
    assert not torch.equal(out, reference)
    off = Gate().apply(patched, "", 0.7, 0.15, 0.0, "local", 0.0, 1.0)[0]
    assert torch.equal(host.unet_output(off, ctx, y=y), reference)
    with torch.inference_mode():
        samples = comfy_nodes.common_ksampler(patched, 0, 2, 5.0, "euler", "normal", encode(patched_clip, "sks"),
                                              encode(patched_clip, ""), {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"]
    assert torch.isfinite(samples).all()


def test_sd2_shapes(tmp_path):
    folder_paths.add_model_folder_path("perfusion", str(tmp_path))
    model, clip = host.tiny_model("sd2"), host.tiny_clip("sd2")
    assert model_patch.model_family(model) == ("sd2", host.SD2_CONTEXT)
    concept = host.concept_for(pack, model, clip, trigger="sks")
    assert set(concept.embeddings) == {"clip_h"} and len(concept.v_targets) == 16
    pack.core.concept_file.write_concept(str(tmp_path / "sd2_sks.safetensors"), concept)
    patched, patched_clip = Load().load(model, clip, "sd2_sks.safetensors", 1.0)
    tokens = patched_clip.tokenize("a photo of sks")["h"][0]
    assert [k for k, t in enumerate(tokens) if torch.is_tensor(t[0])] == [4]
    ctx = context(patched_clip, "a photo of sks", "")
    reference = host.unet_output(model, ctx)
    assert not torch.equal(host.unet_output(patched, ctx), reference)
    off = Gate().apply(patched, "", 0.7, 0.15, 0.0, "local", 0.0, 1.0)[0]
    assert torch.equal(host.unet_output(off, ctx), reference)


def test_ipadapter_style_attn2_replace_still_sees_the_edited_keys(sd1):
    model, clip, patched, patched_clip = sd1
    seen = {}

    def replace(q, k, v, extra_options):        # what IPAdapter's Attn2Replace does with k, v
        seen[extra_options["block"]] = k
        return optimized_attention(q, k, v, extra_options["n_heads"])
    def with_replace(m):
        m = m.clone()
        for block in (("input", 1), ("middle", 0), ("output", 11)):
            m.set_model_attn2_replace(replace, *block)
        return m
    ctx = context(patched_clip, "a photo of sks")
    host.unet_output(with_replace(patched), ctx)
    edited_keys = dict(seen)
    host.unet_output(with_replace(model), ctx)
    assert set(edited_keys) == {("input", 1), ("middle", 0), ("output", 11)}
    assert all(not torch.equal(edited_keys[b], seen[b]) for b in seen)      # the edit reached the replace
    plain = host.unet_output(patched, ctx)
    assert torch.allclose(host.unet_output(with_replace(patched), ctx), plain, atol=1e-5)


def test_attn2_patch_users_compose(sd1):
    model, clip, patched, patched_clip = sd1
    calls = []

    def patch(n, context_attn2, value_attn2, extra_options):
        calls.append(extra_options["block"])
        return n, context_attn2 * 1.5, value_attn2          # another pack changing the context
    m = patched.clone()
    m.set_model_attn2_patch(patch)
    base = model.clone()
    base.set_model_attn2_patch(patch)
    ctx = context(patched_clip, "a photo of sks")
    out = host.unet_output(m, ctx)
    assert len(calls) == 16                                # once per block (cond batch in one forward)
    assert not torch.equal(out, host.unet_output(patched, ctx)) and not torch.equal(out, host.unet_output(base, ctx))


def test_cond_and_uncond_batch_like_separate_forwards(sd1):
    model, clip, patched, patched_clip = sd1
    pos, neg = context(patched_clip, "a photo of sks"), context(patched_clip, "blurry")
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    batched = host.unet_output(patched, torch.cat([pos, neg]), x=x)
    assert torch.allclose(batched[:1], host.unet_output(patched, pos, x=x[:1]), atol=1e-5)
    assert torch.allclose(batched[1:], host.unet_output(patched, neg, x=x[1:]), atol=1e-5)


def test_negative_prompt_without_trigger_behaves_like_the_base_model(sd1):
    model, clip, patched, patched_clip = sd1
    ctx = context(patched_clip, "blurry, low quality")
    assert torch.equal(ctx, context(clip, "blurry, low quality"))            # same encoding
    ours, base = host.unet_output(patched, ctx), host.unet_output(model, ctx)
    # only the method's small gate leak sigmoid(-beta/tau) o* remains
    assert (ours - base).abs().max() < 0.2 * (base.abs().max())


def test_area_conditioning_and_prompts_of_different_lengths(sd1):
    model, clip, patched, patched_clip = sd1
    long_prompt = "a photo of sks " + ", ".join(["in a garden"] * 30)        # two 77-token chunks
    off = Gate().apply(patched, "", 0.7, 0.15, 0.0, "local", 0.0, 1.0)[0]

    def sample(m, c):
        positive = encode(c, long_prompt)
        assert positive[0][0].shape[1] == 154
        area = comfy_nodes.ConditioningSetArea().append(encode(c, "sks"), 32, 32, 0, 0, 1.0)[0]
        with torch.inference_mode():
            return comfy_nodes.common_ksampler(m, 3, 2, 6.0, "euler", "normal", positive + area, encode(c, "blurry"),
                                               {"samples": torch.zeros(2, 4, 8, 8)})[0]["samples"]
    # the base model, batching its conds the way the patched model does (same cond keys)
    base_model = model.clone()
    base_model.add_wrapper_with_key("outer_sample", "perfusion", model_patch._outer_sample_wrapper)
    edited, base = sample(patched, patched_clip), sample(base_model, patched_clip)
    assert edited.shape == (2, 4, 8, 8) and torch.isfinite(edited).all()
    assert not torch.equal(edited, base)                                  # the concept acts through area conds
    assert torch.equal(sample(off, patched_clip), base)                   # and strength 0 is the base model


def test_lowvram_load_gives_the_same_output(sd1):
    model, clip, patched, patched_clip = sd1
    to_k = "diffusion_model." + next(iter(model_patch.cross_attention_layers(model))) + ".to_k"
    m = patched.clone()
    m.add_patches({to_k + ".weight": (torch.full_like(model.get_model_object(to_k).weight, 0.02),)}, 1.0)
    ctx = context(patched_clip, "a photo of sks")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    full = host.unet_output(m, ctx, x=x)
    comfy.model_management.unload_all_models()
    low = m.clone()
    low.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=64 * 1024, load_weights=True)
    try:
        assert low.model.model_lowvram and low.is_injected
        options = copy.deepcopy(low.model_options)
        options.setdefault("transformer_options", {})
        comfy.sampler_helpers.prepare_model_patcher(low, {}, options)
        with torch.inference_mode():
            out = low.model.apply_model(x, torch.ones(1), c_crossattn=ctx, transformer_options=options["transformer_options"])
    finally:
        low.unpatch_model(device_to=torch.device("cpu"))
    assert torch.allclose(out, full, atol=1e-5)


def test_clone_is_cheap_and_tensor_free(sd1):
    model, clip, patched, patched_clip = sd1
    gated = Gate().apply(patched, "", 0.6, 0.15, 1.0, "local", 0.0, 1.0)[0]

    def tensors(obj):
        if torch.is_tensor(obj):
            return 1
        if isinstance(obj, dict):
            return sum(tensors(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(tensors(v) for v in obj)
        return 0
    assert tensors(gated.model_options) == 0                              # deep-copied on every clone
    clone = gated.clone()
    assert clone.get_injections("perfusion")[0] is gated.get_injections("perfusion")[0]


def test_global_key_lock_uses_the_superclass_prompt(sd1):
    model, clip, patched, patched_clip = sd1
    positive, negative = encode(patched_clip, "a photo of sks on a beach"), encode(patched_clip, "blurry")
    superclass_context = positive[0][1]["model_conds"][SUPER_KEY].cond
    assert superclass_context.shape == positive[0][0].shape and not torch.equal(superclass_context, positive[0][0])
    assert torch.equal(superclass_context, context(clip, "a photo of bear on a beach"))   # head noun of "teddy bear"
    assert "model_conds" not in negative[0][1]                   # no trigger: exactly the stock CLIP's cond
    assert torch.equal(negative[0][0], encode(clip, "blurry")[0][0])

    def sample(m, pos):
        with torch.inference_mode():
            return comfy_nodes.common_ksampler(m, 4, 2, 6.0, "euler", "normal", pos, negative,
                                               {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"]
    local = sample(Gate().apply(patched, "", 0.5, 0.15, 1.0, "local", 0.0, 1.0)[0], positive)
    glob = sample(Gate().apply(patched, "", 0.5, 0.15, 1.0, "global", 0.0, 1.0)[0], positive)
    assert not torch.equal(local, glob)
    # a prompt encoded by the stock CLIP has no superclass version: global falls back to local
    plain_pos = encode(clip, "a photo of sks on a beach")
    assert SUPER_KEY not in plain_pos[0][1].get("model_conds", {})


def test_trigger_is_swapped_only_as_a_whole_word(sd1):
    model, clip, patched, patched_clip = sd1
    for text in ("three glass flasks at dusks", "asks and tasks"):        # BPE tails: fla + sks</w>
        assert not any(torch.is_tensor(t[0]) for t in patched_clip.tokenize(text)["l"][0])
        assert torch.equal(context(patched_clip, text), context(clip, text))
    tokens = patched_clip.tokenize("sks, a (sks:1.1) and #sks")["l"][0]
    assert sum(torch.is_tensor(t[0]) for t in tokens) == 3


def count_batches(m):
    sizes = []
    m = m.clone()
    m.add_wrapper_with_key("apply_model", "count", lambda executor, x, *a, **k: sizes.append(x.shape[0]) or executor(x, *a, **k))
    return m, sizes


def test_negative_from_the_stock_clip_still_batches_with_the_positive(sd1):
    model, clip, patched, patched_clip = sd1
    for key_lock in ("local", "global"):
        m, sizes = count_batches(Gate().apply(patched, "", 0.5, 0.15, 1.0, key_lock, 0.0, 1.0)[0])
        with torch.inference_mode():
            comfy_nodes.common_ksampler(m, 1, 3, 6.0, "euler", "normal", encode(patched_clip, "a photo of sks"),
                                        encode(clip, "blurry"), {"samples": torch.zeros(1, 4, 8, 8)})
        assert sizes == [2, 2, 2], (key_lock, sizes)


def test_zeroed_or_foreign_conds_get_their_own_superclass_version(sd1):
    model, clip, patched, patched_clip = sd1
    cond = encode(patched_clip, "a photo of sks")[0]
    zeroed = comfy_nodes.ConditioningZeroOut().zero_out([cond])[0][0]
    assert SUPER_KEY in zeroed[1].get("model_conds", {})                 # ComfyUI keeps model_conds
    for c in (zeroed, [cond[0], {"pooled_output": cond[1]["pooled_output"]}]):
        completed = model_patch._with_superclass_context({"cross_attn": c[0], **c[1]})
        assert torch.equal(completed["model_conds"][SUPER_KEY].cond, c[0])
    untouched = {"cross_attn": cond[0], **cond[1]}
    assert model_patch._with_superclass_context(untouched) is untouched


def test_a_collected_clone_does_not_strip_the_live_edit(sd1):
    import gc
    model, clip, patched, patched_clip = sd1
    ctx = context(patched_clip, "a photo of sks")
    expected = host.unet_output(patched, ctx)                          # loads and injects `patched`
    to_k = next(iter(model_patch.cross_attention_layers(patched).values())).to_k
    copy_ = patched.clone()
    assert copy_.is_injected
    del copy_
    gc.collect()
    assert "forward" in to_k.__dict__
    with torch.inference_mode():
        again = patched.model.apply_model(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
                                          torch.ones(1), c_crossattn=ctx, transformer_options={})
    assert torch.allclose(again, host.unet_output(patched, ctx))
    assert torch.equal(host.unet_output(patched, ctx), expected)


def test_key_lock_is_one_choice_per_model(sd1, tmp_path):
    model, clip, patched, patched_clip = sd1
    folder_paths.add_model_folder_path("perfusion", str(tmp_path))
    pack.core.concept_file.write_concept(str(tmp_path / "co_ohwx.safetensors"),
                                         host.concept_for(pack, model, clip, trigger="ohwx", seed=4,
                                                          covariance=None))
    two = Load().load(patched, patched_clip, "co_ohwx.safetensors", 1.0)[0]
    gated = Gate().apply(two, "sks", 0.5, 0.15, 1.0, "global", 0.0, 1.0)[0]
    settings = model_patch.gate_settings(gated)
    assert settings["sks"].beta == 0.5 and settings["ohwx"].beta == 0.7            # per concept
    assert settings["sks"].key_lock == settings["ohwx"].key_lock == "global"        # per model


def test_a_concept_for_another_layer_layout_is_refused(sd1, tmp_path):
    model, clip, patched, patched_clip = sd1
    folder_paths.add_model_folder_path("perfusion", str(tmp_path))
    concept = host.concept_for(pack, model, clip, trigger="ohwx")
    targets = dict(concept.v_targets)
    targets.pop("middle_block.1.transformer_blocks.0.attn2")
    targets["middle_block.1.transformer_blocks.1.attn2"] = torch.zeros(128)
    from dataclasses import replace
    pack.core.concept_file.write_concept(str(tmp_path / "layout.safetensors"), replace(concept, v_targets=targets))
    with pytest.raises(pack.core.errors.ConceptError,
                       match="'layout.safetensors' does not match this model's cross-attention layers: no value target "
                             "for 1 of this model's layers \\(e.g. middle_block.1.transformer_blocks.0.attn2\\); 1 layers"):
        Load().load(model, clip, "layout.safetensors", 1.0)
