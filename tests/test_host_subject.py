"""Host tests: the subject-reference nodes on tiny SD1.5 / SDXL-shaped models in the real ComfyUI."""

import os

import pytest
import torch
from safetensors.torch import save_file

import host  # skips this module without COMFYUI_PATH
import comfy.samplers
import folder_paths
import nodes as comfy_nodes
from subject_factory import ip_state_dict, layer_widths, reference_image, subjref_adapter

pack = host.load_pack()
SubjectError = pack.core.errors.SubjectError
Loader = pack.nodes.SubjectReferenceLoader
Encoder = pack.nodes.SubjectReferenceEncoder
Apply = pack.nodes.SubjectReferenceApply
TextEncode = pack.nodes.SubjectReferenceTextEncode
subject_patch = pack.nodes.subject_patch
write_adapter = pack.core.subjref_adapter.write_adapter


@pytest.fixture(scope="module")
def sd1():
    return host.tiny_model("sd1"), host.tiny_clip("sd1")


@pytest.fixture(scope="module")
def sdxl():
    return host.tiny_model("sdxl"), host.tiny_clip("sdxl")


@pytest.fixture(scope="module")
def vision():
    return host.tiny_clip_vision()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sd1, sdxl):
    ip_dir, ref_dir = tmp_path_factory.mktemp("ipadapter"), tmp_path_factory.mktemp("subject_ref")
    folder_paths.add_model_folder_path("ipadapter", str(ip_dir))
    folder_paths.add_model_folder_path("subject_ref", str(ref_dir))
    for family, (model, clip) in (("sd15", sd1), ("sdxl", sdxl)):
        for variant in ("base", "plus", "full", "faceid"):
            tensors = {k: v.half() for k, v in ip_state_dict(pack, model, variant, seed=3).items()}
            save_file(tensors, str(ip_dir / f"ip-{variant}_{family}.safetensors"))
        for preset in ("lite", "full"):
            write_adapter(str(ref_dir / f"ref-{preset}_{family}.safetensors"),
                          subjref_adapter(pack, model, clip, preset, seed=5))
    sd = ip_state_dict(pack, sd1[0], "base", seed=3)
    torch.save({"image_proj": {k[11:]: v for k, v in sd.items() if k.startswith("image_proj.")},
                "ip_adapter": {k[11:]: v for k, v in sd.items() if k.startswith("ip_adapter.")}},
               str(ip_dir / "ip-base_sd15.bin"))
    import datetime
    torch.save({"image_proj": {"when": datetime.date(2020, 1, 1)}, "ip_adapter": {}}, str(ip_dir / "unsafe.bin"))
    (ip_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    save_file({"weight": torch.zeros(3)}, str(ip_dir / "unrelated.safetensors"))
    return ip_dir, ref_dir


def load(name):
    return Loader().load(name)[0]


def encode(vision, adapter, box=(0.0, 0.0, 0.5, 1.0), weight=1.0, subjects=None, seed=0, **kw):
    image, mask = reference_image(seed)
    return Encoder().encode(vision, adapter, image, *box, weight, kw.pop("start", 0.0), kw.pop("end", 1.0),
                            subject_mask=mask, subjects=subjects, **kw)[0]


def forward(model, context, seed=0, x=None):
    return host.unet_output(model, context, x=x, seed=seed)


def context_for(model, batch=1, seed=1):
    _, width = pack.nodes.model_patch.model_family(model)
    return torch.randn(batch, 77, width, generator=torch.Generator().manual_seed(seed))


# --- loader ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("variant,tokens", [("base", 4), ("plus", 16), ("full", 17)])
def test_loader_detects_every_ip_variant(folders, family, variant, tokens):
    adapter = load(f"ipadapter/ip-{variant}_{family}.safetensors")
    assert adapter.backend == "ip"
    assert adapter.module.spec.variant == variant
    assert adapter.module.spec.tokens == (0 if variant == "full" else tokens)   # full: one per CLIP token
    assert adapter.module.spec.context_dim == (host.SD15_CONTEXT if family == "sd15" else host.SDXL_L + host.SDXL_G)


def test_loader_reads_bin_through_the_safe_loader(folders):
    adapter = load("ipadapter/ip-base_sd15.bin")
    reference = load("ipadapter/ip-base_sd15.safetensors")
    assert adapter.module.spec == reference.module.spec
    expected = reference.module.state_dict()
    for k, a in adapter.module.state_dict().items():
        torch.testing.assert_close(a, expected[k], atol=2e-3, rtol=1e-2, msg=k)   # the .safetensors copy is fp16


@pytest.mark.parametrize("preset", ["lite", "full"])
def test_loader_detects_subjref(folders, preset):
    adapter = load(f"subject_ref/ref-{preset}_sd15.safetensors")
    assert adapter.backend == "subjref.v1" and adapter.module.config.preset == preset
    fuser = next(iter(adapter.module.fusers.values()))
    assert fuser.feed_forward == (preset == "full")


@pytest.mark.parametrize("name,message", [
    ("ipadapter/ip-faceid_sd15.safetensors", "FaceID"),
    ("ipadapter/broken.safetensors", "broken.safetensors"),
    ("ipadapter/unrelated.safetensors", "neither an IP-Adapter file"),
    ("ipadapter/missing.safetensors", "not found"),
    ("ipadapter/unsafe.bin", "unsafe.bin' could not be read"),     # a pickle with a foreign object: never unpickled
])
def test_loader_refuses_what_it_does_not_know(folders, name, message):
    with pytest.raises(SubjectError, match=message):
        load(name)


def test_loader_lists_both_folders(folders):
    names = Loader.INPUT_TYPES()["required"]["adapter_name"][0]
    assert "ipadapter/ip-base_sd15.safetensors" in names and "subject_ref/ref-lite_sd15.safetensors" in names


# --- ip backend --------------------------------------------------------------------------------------

def test_round_trip_through_ksampler(folders, sd1, vision):
    model, clip = sd1
    adapter = load("ipadapter/ip-plus_sd15.safetensors")
    subjects = encode(vision, adapter)
    patched = Apply().apply(model, adapter, subjects)[0]
    positive = TextEncode().encode(clip, "a photo of a dog <subject1>", subjects, adapter)[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = comfy_nodes.common_ksampler(patched, 0, 3, 5.0, "euler", "normal", positive, negative, latent)[0]["samples"]
    plain = comfy_nodes.common_ksampler(model, 0, 3, 5.0, "euler", "normal", positive, negative, latent)[0]["samples"]
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert adapter.patcher in patched.get_additional_models_with_key(subject_patch.ADDITIONAL_MODELS_KEY)


@pytest.mark.parametrize("variant", ["base", "plus", "full"])
def test_weight_zero_is_bit_identical(folders, sd1, vision, variant):
    model, _ = sd1
    adapter = load(f"ipadapter/ip-{variant}_sd15.safetensors")
    patched = Apply().apply(model, adapter, encode(vision, adapter, weight=0.0))[0]
    context = context_for(model, 2)
    assert torch.equal(forward(patched, context), forward(model, context))
    live = Apply().apply(model, adapter, encode(vision, adapter, weight=1.0))[0]
    assert not torch.equal(forward(live, context), forward(model, context))


@pytest.mark.parametrize("family,fixture", [("sd15", "sd1"), ("sdxl", "sdxl")])
def test_every_attn2_layer_hit_once_per_forward(folders, vision, family, fixture, request, monkeypatch):
    model, _ = request.getfixturevalue(fixture)
    adapter = load(f"ipadapter/ip-base_{family}.safetensors")
    patched = Apply().apply(model, adapter, encode(vision, adapter))[0]
    hits = []
    original = subject_patch.IPAttention.image_term

    def spy(self, q, extra_options):
        hits.append((self.number, tuple(extra_options["block"]), extra_options["block_index"]))
        return original(self, q, extra_options)
    monkeypatch.setattr(subject_patch.IPAttention, "image_term", spy)
    context = context_for(model)
    if family == "sdxl":
        out = host.unet_output(patched, context, y=torch.zeros(1, host.SDXL_POOLED + 6 * 256))
    else:
        out = forward(patched, context)
    assert torch.isfinite(out).all()
    widths, _ = layer_widths(pack, model)
    assert sorted(n for n, _, _ in hits) == sorted(widths)            # each layer exactly once
    assert any(block == ("middle", 0) for _, block, _ in hits)         # the middle block too


def _extra_options(height, width, heads=4, cond_or_uncond=(0,)):
    return {"n_heads": heads, "activations_shape": [len(cond_or_uncond), 32, height, width],
            "original_shape": [len(cond_or_uncond), 4, height, width], "cond_or_uncond": list(cond_or_uncond)}


def test_image_term_is_zero_outside_each_region_and_subjects_are_disjoint(folders, sd1, vision):
    model, _ = sd1
    adapter = load("ipadapter/ip-base_sd15.safetensors")
    left = encode(vision, adapter, box=(0.0, 0.0, 0.5, 1.0))
    both = encode(vision, adapter, box=(0.5, 0.25, 0.5, 0.5), subjects=left, seed=1)
    patched = Apply().apply(model, adapter, both)[0]
    replaces = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    patch = replaces[("input", 1, 0)]
    h = w = 8
    q = torch.randn(2, h * w, 32)
    options = _extra_options(h, w, cond_or_uncond=(0, 1))
    term = patch.image_term(q, options).reshape(2, h, w, 32)
    inside_left = torch.zeros(h, w, dtype=torch.bool)
    inside_left[:, :4] = True
    inside_right = torch.zeros(h, w, dtype=torch.bool)
    inside_right[2:6, 4:] = True
    outside = ~(inside_left | inside_right)
    assert torch.equal(term[:, outside], torch.zeros_like(term[:, outside]))
    assert term[:, inside_left].abs().amin(dim=-1).gt(0).all() and term[:, inside_right].abs().amax() > 0
    # Subject 1's term alone is zero in subject 2's box and vice versa: disjoint support.
    only_left = Apply().apply(model, adapter, left)[0]
    term_left = only_left.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)] \
        .image_term(q, options).reshape(2, h, w, 32)
    assert torch.equal(term_left[:, ~inside_left], torch.zeros_like(term_left[:, ~inside_left]))
    torch.testing.assert_close(term[:, inside_left], term_left[:, inside_left])


def test_image_term_matches_a_dense_per_subject_reference(folders, sd1, vision):
    model, _ = sd1
    adapter = load("ipadapter/ip-plus_sd15.safetensors")
    subjects = encode(vision, adapter, box=(0.5, 0.5, 0.5, 0.5),
                      subjects=encode(vision, adapter, box=(0.0, 0.0, 0.75, 0.75), weight=0.6), seed=2)
    patch = Apply().apply(model, adapter, subjects)[0] \
        .model_options["transformer_options"]["patches_replace"]["attn2"][("output", 9, 0)]
    h = w = 8
    q = torch.randn(2, h * w, 32, dtype=torch.float64).float()
    term = patch.image_term(q, _extra_options(h, w, cond_or_uncond=(1, 0)))
    grids = pack.core.subject_regions.subject_grids([(s.box, None) for s in subjects], h, w)
    expected = torch.zeros(2, h * w, 32, dtype=torch.float64)
    for row, tokens_of in ((0, "plain_tokens"), (1, "tokens")):
        for s, grid in zip(subjects, grids):
            k, v = adapter.module.keys_values(getattr(s, tokens_of)[None], patch.number)
            for head in range(4):
                sl = slice(head * 8, head * 8 + 8)
                attn = torch.softmax(q[row:row + 1, :, sl].double() @ k[..., sl].double().transpose(1, 2) / 8 ** 0.5, -1)
                expected[row, :, sl] += s.weight * grid[:, None].double() * (attn @ v[..., sl].double())[0]
    torch.testing.assert_close(term.double(), expected, atol=1e-5, rtol=1e-4)


def test_overlapping_regions_add_at_most_one_subject(folders, sd1, vision):
    grids = pack.core.subject_regions.subject_grids(
        [(pack.core.subject_regions.Box(0, 0, 0.75, 1), None), (pack.core.subject_regions.Box(0.25, 0, 0.75, 1), None)], 4, 4)
    assert grids.sum(0).max() == 1.0 and grids.sum(0).min() == 1.0


def test_dual_cfg_branch_table(folders, sd1, vision, monkeypatch):
    model, clip = sd1
    adapter = load("ipadapter/ip-base_sd15.safetensors")
    subjects = encode(vision, adapter)
    patched = Apply().apply(model, adapter, subjects)[0]
    seen = []
    original = subject_patch.IPAttention.image_term

    def spy(self, q, extra_options):
        seen.append((tuple(extra_options["cond_or_uncond"]), extra_options.get(pack.core.subjects.BRANCH_TABLE_KEY)))
        return original(self, q, extra_options)
    monkeypatch.setattr(subject_patch.IPAttention, "image_term", spy)
    positive = comfy_nodes.CLIPTextEncode().encode(clip, "a dog")[0]
    middle = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    from comfy_extras.nodes_custom_sampler import DualCFGGuider
    guider = DualCFGGuider().get_guider(patched, positive, middle, negative, 5.0, 1.5, "regular")[0]
    sigmas = comfy.samplers.calculate_sigmas(patched.get_model_object("model_sampling"), "normal", 2)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    guider.sample(noise, torch.zeros(1, 4, 8, 8), comfy.samplers.sampler_object("euler"), sigmas, seed=0)
    assert seen and all(table == pack.core.subjects.BRANCHES_DUAL_CFG for _, table in seen)
    assert pack.core.subjects.branch_roles([0, 1, 2], pack.core.subjects.BRANCHES_DUAL_CFG) == ["plain", "subject", "subject"]
    seen.clear()
    comfy_nodes.common_ksampler(patched, 0, 1, 5.0, "euler", "normal", positive, negative, {"samples": torch.zeros(1, 4, 8, 8)})
    assert seen and all(table == pack.core.subjects.BRANCHES_CFG for _, table in seen)


def test_foreign_replace_is_wrapped_and_add_protocol_works(folders, sd1, vision):
    model, _ = sd1
    adapter = load("ipadapter/ip-base_sd15.safetensors")
    calls = []

    def foreign(q, k, v, extra_options):
        calls.append(extra_options["block"])
        import comfy.ldm.modules.attention as attention
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])
    other = model.clone()
    other.set_model_attn2_replace(foreign, "input", 1)          # a 2-tuple key, as SD1.5 packs register
    patched = Apply().apply(other, adapter, encode(vision, adapter))[0]
    context = context_for(model)
    forward(patched, context)
    assert calls == [("input", 1)]
    later = patched.clone()
    added = []
    later.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 2, 0)].add(
        lambda out, q, k, v, eo, **kw: added.append(kw["tag"]) or torch.zeros_like(out), tag="x", sigma_start=1e9, sigma_end=0.0)
    forward(later, context)
    assert added == ["x"]
    added.clear()
    forward(patched, context)                                   # the clone's add did not leak back
    assert added == []


def test_perfusion_and_subject_both_act(folders, sd1, vision, monkeypatch):
    model, clip = sd1
    concept = host.concept_for(pack, model, clip, trigger="sks", seed=0)
    with_concept = pack.nodes.model_patch.apply_concept(model, concept, 1.0)
    adapter = load("ipadapter/ip-base_sd15.safetensors")
    both = Apply().apply(with_concept, adapter, encode(vision, adapter))[0]
    stack = pack.core.concept_stack.ConceptStack
    counted = []
    for name in ("key_forward", "value_forward"):
        original = getattr(stack, name)

        def counting(self, *a, _f=original, **k):
            counted.append(1)
            return _f(self, *a, **k)
        monkeypatch.setattr(stack, name, counting)
    context = context_for(model)
    out_both = forward(both, context)
    assert len(counted) == 32          # 16 layers x (to_k, to_v): the edit fires on the replace path too
    out_concept = forward(with_concept, context)
    out_subject = forward(Apply().apply(model, adapter, encode(vision, adapter))[0], context)
    assert not torch.equal(out_both, out_concept) and not torch.equal(out_both, out_subject)


# --- subjref.v1 backend ------------------------------------------------------------------------------

def test_subjref_weight_zero_identical_and_gates_act(folders, sd1, vision):
    model, _ = sd1
    adapter = load("subject_ref/ref-full_sd15.safetensors")
    context = context_for(model, 2)
    off = Apply().apply(model, adapter, encode(vision, adapter, weight=0.0))[0]
    assert torch.equal(forward(off, context), forward(model, context))
    on = Apply().apply(model, adapter, encode(vision, adapter))[0]
    assert not torch.equal(forward(on, context), forward(model, context))


def test_mask_patch_equals_a_fifth_conv_in_channel(folders, sd1, vision):
    model, _ = sd1
    adapter = load("subject_ref/ref-lite_sd15.safetensors")
    subjects = encode(vision, adapter, box=(0.25, 0.0, 0.5, 0.75))
    patched = Apply().apply(model, adapter, subjects)[0]
    patch = patched.model_options["transformer_options"]["patches"]["input_block_patch"][-1]
    conv_in = model.get_model_object("diffusion_model").input_blocks[0][0]
    x = torch.randn(1, 4, 8, 8)
    h = conv_in(x)
    got = patch(h, {"block": ("input", 0), "cond_or_uncond": [0]})
    location = torch.zeros(1, 1, 8, 8)
    location[..., 0:6, 2:6] = 1.0
    five = torch.nn.Conv2d(5, conv_in.out_channels, 3, padding=1)
    with torch.no_grad():
        five.weight.copy_(torch.cat([conv_in.weight, adapter.module.mask_in.weight], dim=1))
        five.bias.copy_(conv_in.bias)
    torch.testing.assert_close(got, five(torch.cat([x, location], dim=1)), atol=1e-5, rtol=1e-5)
    assert torch.equal(patch(h, {"block": ("input", 0), "cond_or_uncond": [1]}), h)      # not on the negative
    assert torch.equal(patch(h, {"block": ("input", 1), "cond_or_uncond": [0]}), h)


def test_subjref_update_is_zero_outside_regions_and_subjects_do_not_see_each_other(folders, sd1, vision):
    model, _ = sd1
    adapter = load("subject_ref/ref-lite_sd15.safetensors")
    first = encode(vision, adapter, box=(0.0, 0.0, 0.5, 0.5))
    two = encode(vision, adapter, box=(0.5, 0.5, 0.5, 0.5), subjects=first, seed=1)
    two_other = encode(vision, adapter, box=(0.5, 0.5, 0.5, 0.5), subjects=first, seed=7)
    x = torch.randn(1, 64, 32)
    options = {"block": ("input", 1), "block_index": 0, "activations_shape": [1, 32, 8, 8], "cond_or_uncond": [0]}

    def run(subjects):
        patch = Apply().apply(model, adapter, subjects)[0].model_options["transformer_options"]["patches"]["middle_patch"][-1]
        return patch(x, options).reshape(8, 8, 32)
    a, b = run(two), run(two_other)
    grid = x.reshape(8, 8, 32)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[:4, :4] = outside[4:, 4:] = False
    assert torch.equal(a[outside], grid[outside])
    assert not torch.equal(a[:4, :4], grid[:4, :4])
    torch.testing.assert_close(a[:4, :4], b[:4, :4])          # subject 1's box ignores subject 2's image
    assert not torch.allclose(a[4:, 4:], b[4:, 4:])


def test_cls_splice_keeps_length_and_places_the_vector(folders, sd1, vision, monkeypatch):
    model, clip = sd1
    adapter = load("subject_ref/ref-lite_sd15.safetensors")
    subjects = encode(vision, adapter)
    seen = {}
    original = clip.encode_from_tokens_scheduled

    def spy(tokens, *a, **k):
        seen.setdefault("tokens", tokens)
        return original(tokens, *a, **k)
    monkeypatch.setattr(clip, "encode_from_tokens_scheduled", spy)
    cond = TextEncode().encode(clip, "a photo of a dog <subject1> on grass", subjects, adapter)[0]
    plain = comfy_nodes.CLIPTextEncode().encode(clip, "a photo of a dog on grass")[0]
    assert cond[0][0].shape == plain[0][0].shape                   # [1, 77, width]
    segment = seen["tokens"]["l"][0]
    assert len(segment) == 77
    positions = [i for i, t in enumerate(segment) if isinstance(t[0], torch.Tensor)]
    assert positions == [6]                                       # start, a, photo, of, a, dog, <subject1>
    expected = adapter.module.placeholder_embedding(subjects[0].image_embeds[None])["l"][0]
    torch.testing.assert_close(segment[6][0], expected)
    assert not torch.equal(cond[0][0], plain[0][0])


def test_ip_text_encode_drops_placeholders(folders, sd1, vision):
    model, clip = sd1
    adapter = load("ipadapter/ip-base_sd15.safetensors")
    cond = TextEncode().encode(clip, "a dog <subject1> on grass", encode(vision, adapter), adapter)[0]
    plain = comfy_nodes.CLIPTextEncode().encode(clip, "a dog on grass")[0]
    assert torch.equal(cond[0][0], plain[0][0])


# --- bad input ---------------------------------------------------------------------------------------

def test_wrong_clip_vision_for_the_adapter(folders, vision):
    adapter = load("ipadapter/ip-base_sd15.safetensors")
    wide = host.tiny_clip_vision(projection=48)
    with pytest.raises(SubjectError, match="clip_vision gives image_embeds of width 48"):
        encode(wide, adapter)


def test_sd15_adapter_on_sdxl(folders, sdxl, vision):
    adapter = load("ipadapter/ip-base_sd15.safetensors")
    with pytest.raises(SubjectError, match="this model is sdxl"):
        Apply().apply(sdxl[0], adapter, encode(vision, adapter))
    ref = load("subject_ref/ref-lite_sd15.safetensors")
    with pytest.raises(SubjectError, match="this model is sdxl"):
        Apply().apply(sdxl[0], ref, encode(vision, ref))


@pytest.mark.parametrize("box,message", [((0.6, 0.0, 0.5, 0.5), "outside the image"),
                                         ((0.2, 0.2, 0.0, 0.5), "zero size"),
                                         ((-0.1, 0.0, 0.5, 0.5), "outside the image")])
def test_bad_boxes(folders, vision, box, message):
    adapter = load("ipadapter/ip-base_sd15.safetensors")
    with pytest.raises(SubjectError, match=message):
        encode(vision, adapter, box=box)


def test_empty_masks(folders, vision):
    adapter = load("ipadapter/ip-base_sd15.safetensors")
    image, _ = reference_image()
    with pytest.raises(SubjectError, match="subject_mask is empty"):
        Encoder().encode(vision, adapter, image, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, subject_mask=torch.zeros(1, 40, 48))
    with pytest.raises(SubjectError, match="region_mask is empty"):
        Encoder().encode(vision, adapter, image, 0.0, 0.0, 0.5, 0.5, 1.0, 0.0, 1.0, region_mask=torch.zeros(1, 64, 64))


def test_more_subjects_than_supported(folders, vision):
    adapter = load("subject_ref/ref-lite_sd15.safetensors")           # max_subjects 2
    two = encode(vision, adapter, subjects=encode(vision, adapter))
    with pytest.raises(SubjectError, match="at most 2"):
        encode(vision, adapter, subjects=two)


def test_subjects_from_another_adapter(folders, sd1, vision):
    a, b = load("ipadapter/ip-base_sd15.safetensors"), load("ipadapter/ip-plus_sd15.safetensors")
    with pytest.raises(SubjectError, match="encoded for another adapter"):
        Apply().apply(sd1[0], b, encode(vision, a))


def test_corrupt_subjref_file(folders):
    path = folders[1] / "ref-lite_sd15.safetensors"
    damaged = folders[1] / "damaged.safetensors"
    data = bytearray(path.read_bytes())
    damaged.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(SubjectError, match="damaged.safetensors"):
        load("subject_ref/damaged.safetensors")
    os.unlink(damaged)


# --- review fixes: packs added after ours, mixed batches, guider branches, σ windows, memory --------

def test_an_sd15_ipadapter_patch_added_after_ours_still_runs(folders, sd1, vision):
    model, clip = sd1
    adapter = load("ipadapter/ip-base_sd15.safetensors")
    patched = Apply().apply(model, adapter, encode(vision, adapter))[0]
    later = patched.clone()
    calls = []

    def foreign(q, k, v, extra_options):
        calls.append(extra_options["block"])
        import comfy.ldm.modules.attention as attention
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])
    later.set_model_attn2_replace(foreign, "output", 9)          # 2-tuple, as SD1.5 IPAdapter packs do
    positive = comfy_nodes.CLIPTextEncode().encode(clip, "a dog")[0]
    comfy_nodes.common_ksampler(later, 0, 1, 5.0, "euler", "normal", positive, positive, {"samples": torch.zeros(1, 4, 8, 8)})
    assert calls and set(calls) == {("output", 9)}


def test_grounding_patch_changes_only_the_subject_rows_of_a_mixed_batch(folders, sd1, vision):
    model, _ = sd1
    adapter = load("subject_ref/ref-full_sd15.safetensors")
    patch = Apply().apply(model, adapter, encode(vision, adapter, box=(0.0, 0.0, 1.0, 1.0)))[0] \
        .model_options["transformer_options"]["patches"]["middle_patch"][-1]
    x = torch.randn(2, 64, 32)
    options = {"block": ("output", 9), "block_index": 0, "activations_shape": [2, 32, 8, 8]}
    mixed = patch(x, {**options, "cond_or_uncond": [1, 0]})           # negative first, then positive
    alone = patch(x[1:], {**options, "cond_or_uncond": [0], "activations_shape": [1, 32, 8, 8]})
    assert torch.equal(mixed[0], x[0])
    torch.testing.assert_close(mixed[1:], alone)
    assert not torch.allclose(alone, x[1:])


def test_dual_cfg_chunks_get_the_tokens_their_branch_names(folders, sd1, vision):
    model, _ = sd1
    adapter = load("ipadapter/ip-plus_sd15.safetensors")
    patch = Apply().apply(model, adapter, encode(vision, adapter))[0] \
        .model_options["transformer_options"]["patches_replace"]["attn2"][("input", 4, 0)]
    subjects_table = pack.core.subjects
    q = torch.randn(3, 16, 64)
    options = {"n_heads": 4, "activations_shape": [3, 64, 4, 4], "cond_or_uncond": [0, 1, 2],
               subjects_table.BRANCH_TABLE_KEY: subjects_table.BRANCHES_DUAL_CFG}
    term = patch.image_term(q, options)
    single = {"n_heads": 4, "activations_shape": [1, 64, 4, 4]}
    with_subject = [patch.image_term(q[i:i + 1], {**single, "cond_or_uncond": [0]}) for i in range(3)]
    plain = [patch.image_term(q[i:i + 1], {**single, "cond_or_uncond": [1]}) for i in range(3)]
    torch.testing.assert_close(term[0:1], plain[0])                  # negative: IP-Adapter's "no image" tokens
    torch.testing.assert_close(term[1:2], with_subject[1])           # middle (empty prompt): the subject
    torch.testing.assert_close(term[2:3], with_subject[2])           # positive: the subject
    assert not torch.allclose(plain[0], with_subject[0])


def test_time_window_follows_the_sampled_models_sigmas(folders, sd1, vision):
    model, _ = sd1
    adapter = load("ipadapter/ip-base_sd15.safetensors")
    subjects = encode(vision, adapter, start=0.5, end=1.0)
    patch = Apply().apply(model, adapter, subjects)[0] \
        .model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
    sampling = model.get_model_object("model_sampling")
    key = pack.nodes.subject_patch.SAMPLING_KEY
    early = {"sigmas": torch.tensor([float(sampling.percent_to_sigma(0.2))]), key: sampling}
    late = {"sigmas": torch.tensor([float(sampling.percent_to_sigma(0.7))]), key: sampling}
    assert patch.state.active(early) == [] and patch.state.active(late) == [0]


def test_loaded_adapters_cast_weights_to_the_input_device_and_dtype(folders):
    for name in ("ipadapter/ip-plus_sd15.safetensors", "subject_ref/ref-full_sd15.safetensors"):
        module = load(name).module
        layers = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Conv2d))]
        assert layers and all(getattr(m, "comfy_cast_weights", False) for m in layers), name


def test_applying_twice_attaches_the_adapter_once(folders, sd1, vision):
    model, _ = sd1
    adapter = load("ipadapter/ip-base_sd15.safetensors")
    once = Apply().apply(model, adapter, encode(vision, adapter))[0]
    twice = Apply().apply(once, adapter, encode(vision, adapter, box=(0.5, 0.0, 0.5, 1.0)))[0]
    attached = twice.get_additional_models_with_key(subject_patch.ADDITIONAL_MODELS_KEY)
    assert len(attached) == 1 and attached[0].model is adapter.module


def test_negative_weight_is_refused_for_a_subject_adapter(folders, vision):
    adapter = load("subject_ref/ref-lite_sd15.safetensors")
    with pytest.raises(SubjectError, match="weights from 0 up"):
        encode(vision, adapter, weight=-0.5)
