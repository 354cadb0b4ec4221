"""Host tests: the MS-Diffusion backend of the subject-reference nodes on tiny SDXL-shaped models in the real
ComfyUI: both file forms, the encoder (phrase, box, reference image), the joint masked attention per attn2
layer (boxes on each layer's own grid, non-square), scale / weights / time window, and composition with
Perfusion and other packs' attn2 patches. The tiny adapter is self-consistent with the tiny models (its widths
are theirs); the released file's own widths are checked in tests/test_ms_diffusion_core.py."""

import json
import logging
import os

import pytest
import torch
from safetensors.torch import save_file

import host  # skips this module without COMFYUI_PATH
import comfy.supported_models
import folder_paths
import nodes as comfy_nodes
import tiny_models
from ms_factory import ms_flat, official_ip_attention
from subject_factory import layer_widths, ms_nested, reference_image

pack = host.load_pack()
SubjectError = pack.core.errors.SubjectError
Loader = pack.nodes.SubjectReferenceLoader
Encoder = pack.nodes.SubjectReferenceEncoder
Apply = pack.nodes.SubjectReferenceApply
subject_patch = pack.nodes.subject_patch
ms = pack.core.ms_diffusion


@pytest.fixture(scope="module")
def sdxl():
    return host.tiny_model("sdxl"), host.tiny_clip("sdxl")


@pytest.fixture(scope="module")
def vision():
    return host.tiny_clip_vision()


def full_depth_sdxl():
    """SDXL's exact block layout (2 + 10-deep stacks: 70 attn2 layers), small channels."""
    config = tiny_models.sdxl_unet_config()
    config.update(transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                  transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10])
    model_config = comfy.supported_models.SDXL(config)
    model_config.unet_config.update({"num_head_channels": 16})
    model = model_config.get_model({}, device=comfy.model_management.unet_offload_device())
    tiny_models.init_random_(model.diffusion_model, 0)
    return tiny_models._patcher(model)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sdxl):
    model, clip = sdxl
    ref_dir = tmp_path_factory.mktemp("subject_ref")
    folder_paths.add_model_folder_path("subject_ref", str(ref_dir))
    nested = ms_nested(pack, model, clip, seed=4)
    torch.save(nested, str(ref_dir / "ms_adapter.bin"))                          # the official pickle's form
    save_file({k: v.half().contiguous() for k, v in ms_flat(nested).items()}, str(ref_dir / "ms_adapter.safetensors"))
    broken = {k: v for k, v in nested.items() if k != "dummy_image_tokens"}
    torch.save(broken, str(ref_dir / "ms_no_dummy.bin"))
    import datetime
    torch.save({"image_proj": {}, "ms_adapter": {"1.to_k_ip.weight": datetime.date(2020, 1, 1)}},
               str(ref_dir / "ms_unsafe.bin"))                                   # a foreign object: never unpickled
    wide = ms_nested(pack, model, clip, seed=4, feature_dim=48)
    torch.save(wide, str(ref_dir / "ms_wide.bin"))
    full = full_depth_sdxl()
    save_file(ms_flat(ms_nested(pack, full, clip, seed=6)), str(ref_dir / "ms_full_depth.safetensors"))
    return ref_dir, full


def load(name):
    return Loader().load(name)[0]


def encode(vision, adapter, clip, box=(0.0, 0.0, 0.5, 1.0), weight=1.0, subjects=None, seed=0, phrase="dog", **kw):
    image, mask = reference_image(seed)
    return Encoder().encode(vision, adapter, image, *box, weight, kw.pop("start", 0.0), kw.pop("end", 1.0),
                            subject_mask=mask, subjects=subjects, clip=clip, phrase=phrase, **kw)[0]


def two_subjects(vision, adapter, clip, boxes=((0.0, 0.25, 0.4, 0.5), (0.6, 0.25, 0.4, 0.5)), weights=(1.0, 1.0)):
    first = encode(vision, adapter, clip, box=boxes[0], weight=weights[0], phrase="dog")
    return encode(vision, adapter, clip, box=boxes[1], weight=weights[1], subjects=first, seed=1, phrase="cat")


def replace_at(model, key):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"][key]


def sdxl_forward(model, context, x=None, seed=0):
    return host.unet_output(model, context, x=x, seed=seed, y=torch.zeros(context.shape[0], host.SDXL_POOLED + 6 * 256))


def context_for(batch=1, seed=1):
    return torch.randn(batch, 77, host.SDXL_L + host.SDXL_G, generator=torch.Generator().manual_seed(seed))


# --- loading ----------------------------------------------------------------------------------------------

def test_both_file_forms_load_as_ms_diffusion(folders):
    a, b = load("subject_ref/ms_adapter.bin"), load("subject_ref/ms_adapter.safetensors")
    assert a.backend == b.backend == "ms-diffusion" and a.module.spec == b.module.spec
    assert a.describe() == "MS-Diffusion (context 80)" and a.module.spec.phrase_dim == host.SDXL_L
    for k, v in a.module.state_dict().items():
        torch.testing.assert_close(v, b.module.state_dict()[k], atol=2e-3, rtol=1e-2, msg=k)   # fp16 copy
    layers = [m for m in a.module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm))]
    assert layers and all(getattr(m, "comfy_cast_weights", False) for m in layers)


@pytest.mark.parametrize("name,message", [("subject_ref/ms_no_dummy.bin", "ms_no_dummy.bin': 'dummy_image_tokens'"),
                                          ("subject_ref/ms_unsafe.bin", "ms_unsafe.bin' could not be read")])
def test_bad_ms_files_are_refused_with_their_name(folders, name, message):
    with pytest.raises(SubjectError, match=message):
        load(name)


def test_an_ms_adapter_for_another_model_is_refused_at_apply(folders, sdxl, vision):
    model, clip = sdxl
    adapter = load("subject_ref/ms_full_depth.safetensors")           # 70 layers; the tiny SDXL has 23
    with pytest.raises(SubjectError, match="MS-Diffusion"):
        Apply().apply(model, adapter, encode(vision, adapter, clip))
    sd1 = host.tiny_model("sd1")
    small = load("subject_ref/ms_adapter.bin")
    with pytest.raises(SubjectError, match="this model is sd1"):
        Apply().apply(sd1, small, encode(vision, small, clip))


# --- the SDXL layer numbering on SDXL's own block layout ---------------------------------------------------

def test_every_attn2_layer_of_sdxl_gets_its_file_layer_once(folders, vision, sdxl, monkeypatch):
    _, full = folders
    _, clip = sdxl
    adapter = load("subject_ref/ms_full_depth.safetensors")
    assert sorted(adapter.module.spec.hidden) == list(range(1, 140, 2))
    patched = Apply().apply(full, adapter, encode(vision, adapter, clip, box=(0, 0, 1, 1)))[0]
    hits = []
    original = subject_patch.MSAttention.image_term

    def spy(self, q, extra_options):
        hits.append((self.number, (*extra_options["block"], extra_options["block_index"]), q.shape[-1]))
        return original(self, q, extra_options)
    monkeypatch.setattr(subject_patch.MSAttention, "image_term", spy)
    out = sdxl_forward(patched, context_for())
    assert torch.isfinite(out).all()
    assert sorted(n for n, _, _ in hits) == list(range(1, 140, 2))                        # 70 layers, once each
    by_number = {n: key for n, key, _ in hits}
    assert by_number[1] == ("input", 4, 0) and by_number[47] == ("input", 8, 9) and by_number[49] == ("output", 0, 0)
    assert by_number[119] == ("output", 5, 1) and by_number[121] == ("middle", 0, 0) and by_number[139] == ("middle", 0, 9)
    widths, _ = layer_widths(pack, full)
    assert all(adapter.module.spec.hidden[n] == widths[n] == width for n, _, width in hits)


# --- the encoder -------------------------------------------------------------------------------------------

def test_phrase_is_clip_l_pooled_without_projection(sdxl):
    _, clip = sdxl
    got = pack.nodes.subject_nodes.phrase_embedding(clip, "dog")
    tower = clip.cond_stage_model.clip_l
    ids = torch.tensor([[t for t, _ in clip.tokenize("dog")["l"][0]]])
    with torch.inference_mode():
        hidden, _, projected, pooled = tower.transformer(ids)
    end = int((ids[0] == 49407).nonzero()[0])                                   # the first end token
    torch.testing.assert_close(got, hidden[0, end].float())                    # final LayerNorm at the end token
    torch.testing.assert_close(got, pooled[0].float())
    assert not torch.allclose(got, projected[0].float())
    assert got.shape == (host.SDXL_L,)
    assert not torch.allclose(got, pack.nodes.subject_nodes.phrase_embedding(clip, "cat"))


def test_encoder_computes_the_tokens_once_from_phrase_box_and_cropped_image(folders, sdxl, vision, monkeypatch):
    model, clip = sdxl
    adapter = load("subject_ref/ms_adapter.bin")
    image, mask = reference_image(0)
    subjects = Encoder().encode(vision, adapter, image, 0.1, 0.2, 0.4, 0.5, 0.7, 0.0, 1.0, subject_mask=mask,
                                clip=clip, phrase=" dog ")[0]
    s = subjects[0]
    assert s.tokens.shape == (16, host.SDXL_L + host.SDXL_G) and s.extra["phrase"] == "dog" and s.weight == 0.7
    crop = pack.core.subject_regions.ms_reference_crop(image[0], mask[0])
    with torch.inference_mode():
        feature = vision.encode_image(crop, crop=False)["penultimate_hidden_states"]
        phrase = pack.nodes.subject_nodes.phrase_embedding(clip, "dog")
        expected = adapter.module.tokens(feature.float(), phrase[None], torch.tensor([[0.1, 0.2, 0.5, 0.7]]))[0]
    torch.testing.assert_close(s.tokens, expected.float(), atol=1e-5, rtol=1e-4)
    # nothing is recomputed per step: sampling never calls the resampler or CLIP vision
    patched = Apply().apply(model, adapter, subjects)[0]
    calls = []
    monkeypatch.setattr(type(adapter.module), "tokens", lambda *a, **k: calls.append(1))
    sdxl_forward(patched, context_for(2))
    assert calls == []


@pytest.mark.parametrize("kwargs,message", [
    ({"phrase": ""}, "phrase: adapter 'subject_ref/ms_adapter.bin' .* needs the subject's phrase"),
    ({"clip": None}, "clip: .* connect the SDXL checkpoint's CLIP"),
    ({"box": (0.7, 0.0, 0.5, 0.5)}, "outside the image"),
    ({"box": (0.2, 0.2, 0.0, 0.4)}, "zero size"),
])
def test_encoder_refuses_bad_input(folders, sdxl, vision, kwargs, message):
    _, clip = sdxl
    adapter = load("subject_ref/ms_adapter.bin")
    kwargs = {"clip": clip, **kwargs}
    with pytest.raises(SubjectError, match=message):
        encode(vision, adapter, **kwargs)


def test_wrong_clip_and_wrong_clip_vision(folders, sdxl, vision):
    _, clip = sdxl
    adapter = load("subject_ref/ms_adapter.bin")
    with pytest.raises(SubjectError, match=r"clip: its CLIP-L pooled output has width 64.*reads phrases of width 32"):
        encode(vision, adapter, host.tiny_clip("sd1"))
    with pytest.raises(SubjectError, match=r"clip_vision gives penultimate_hidden_states of width 64.*needs 48.*clip_vision_g"):
        encode(vision, load("subject_ref/ms_wide.bin"), clip)


def test_more_subjects_than_trained_are_allowed_with_a_warning(folders, sdxl, vision, caplog):
    _, clip = sdxl
    adapter = load("subject_ref/ms_adapter.bin")
    subjects = None
    with caplog.at_level(logging.WARNING, logger="perfusion"):
        for k in range(5):
            subjects = encode(vision, adapter, clip, box=(0.2 * k, 0.0, 0.2, 1.0), subjects=subjects, seed=k)
    assert len(subjects) == 5 and "trained with at most 4 subjects" in caplog.text
    for k in range(3):
        subjects = encode(vision, adapter, clip, subjects=subjects, seed=k)
    with pytest.raises(SubjectError, match="supports at most 8"):
        encode(vision, adapter, clip, subjects=subjects)
    tooltip = Encoder.INPUT_TYPES()["optional"]["subjects"][1]["tooltip"]
    assert "at most 4 subjects" in tooltip


# --- attention: boxes on each layer's grid, branches, scale ------------------------------------------------

def _options(height, width, heads, cond_or_uncond=(0, 1), **extra):
    return {"n_heads": heads, "activations_shape": [len(cond_or_uncond), 64, height, width],
            "original_shape": [len(cond_or_uncond), 4, height * 4, width * 4], "cond_or_uncond": list(cond_or_uncond),
            **extra}


@pytest.mark.parametrize("height,width", [(6, 10), (8, 8), (5, 3)])
def test_image_term_matches_the_official_processor_on_the_layers_grid(folders, sdxl, vision, height, width):
    model, clip = sdxl
    adapter = load("subject_ref/ms_adapter.bin")
    boxes = ((0.0, 0.25, 0.5, 0.5), (0.4, 0.25, 0.6, 0.5))                   # overlapping: one joint softmax
    subjects = two_subjects(vision, adapter, clip, boxes, weights=(1.0, 0.5))
    patched = Apply().apply(model, adapter, subjects, scale=0.6)[0]
    key = ("input", 7, 1)
    patch = replace_at(patched, key)
    channels = adapter.module.spec.hidden[patch.number]
    heads = channels // 16
    q = torch.randn(2, height * width, channels, generator=torch.Generator().manual_seed(2))
    term = patch.image_term(q, _options(height, width, heads))
    tokens = torch.cat([adapter.module.dummy_image_tokens[0].float()] + [s.tokens for s in subjects])
    with torch.inference_mode():
        k, v = adapter.module.keys_values(tokens, patch.number)
    xyxy = [tuple(s.box.xyxy().tolist()) for s in subjects]
    expected = official_ip_attention(q[:1], k, v, xyxy, height, width, heads, 16, 4, [0.6 * 1.0, 0.6 * 0.5])
    torch.testing.assert_close(term[:1].double(), expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(term[1], torch.zeros_like(term[1]))                      # the negative branch: nothing


def test_each_subjects_effect_stays_inside_its_box(folders, sdxl, vision):
    """At the attention level, on a non-square grid: zero outside the boxes; inside box 1 only subject 1's
    image counts (subject 2's photo changed: box 1 unchanged), and the other way round."""
    model, clip = sdxl
    adapter = load("subject_ref/ms_adapter.bin")
    boxes = ((0.0, 0.0, 0.5, 1.0), (0.5, 0.25, 0.5, 0.5))
    first = encode(vision, adapter, clip, box=boxes[0], phrase="dog")
    a = encode(vision, adapter, clip, box=boxes[1], subjects=first, seed=1, phrase="cat")
    b = encode(vision, adapter, clip, box=boxes[1], subjects=first, seed=7, phrase="cat")
    height, width = 4, 6
    inside_1 = ms.box_cells(a[0].box.xyxy(), height, width)
    inside_2 = ms.box_cells(a[1].box.xyxy(), height, width)
    for key in (("input", 4, 0), ("middle", 0, 2), ("output", 5, 1)):
        pa, pb = replace_at(Apply().apply(model, adapter, a)[0], key), replace_at(Apply().apply(model, adapter, b)[0], key)
        channels = adapter.module.spec.hidden[pa.number]
        q = torch.randn(1, height * width, channels, generator=torch.Generator().manual_seed(3))
        options = _options(height, width, channels // 16, cond_or_uncond=(0,))
        ta, tb = pa.image_term(q, options)[0], pb.image_term(q, options)[0]
        outside = ~(inside_1 | inside_2)
        assert torch.equal(ta[outside], torch.zeros_like(ta[outside]))
        assert ta[inside_1].abs().amax(dim=-1).gt(0).all() and ta[inside_2].abs().amax(dim=-1).gt(0).all()
        assert torch.equal(ta[inside_1], tb[inside_1])                          # subject 2's image: not in box 1
        assert not torch.allclose(ta[inside_2], tb[inside_2])


def test_scale_and_weights_multiply_the_image_term(folders, sdxl, vision):
    model, clip = sdxl
    adapter = load("subject_ref/ms_adapter.bin")
    q = torch.randn(1, 24, 64, generator=torch.Generator().manual_seed(4))
    options = _options(4, 6, 4, cond_or_uncond=(0,))
    terms = {}
    for scale, weights in ((0.6, (1.0, 1.0)), (0.3, (1.0, 1.0)), (0.6, (0.5, 1.0)), (0.0, (1.0, 1.0))):
        patched = Apply().apply(model, adapter, two_subjects(vision, adapter, clip, weights=weights), scale=scale)[0]
        terms[scale, weights] = replace_at(patched, ("input", 4, 0)).image_term(q, options)
    base = terms[0.6, (1.0, 1.0)]
    torch.testing.assert_close(terms[0.3, (1.0, 1.0)], base / 2)
    left = ms.box_cells((0.0, 0.25, 0.4, 0.75), 4, 6)
    torch.testing.assert_close(terms[0.6, (0.5, 1.0)][0, left], base[0, left] / 2)
    assert terms[0.0, (1.0, 1.0)] is None
    assert Apply.INPUT_TYPES()["optional"]["scale"][1]["default"] == 0.6


def test_start_end_percent_and_weight_zero(folders, sdxl, vision):
    model, clip = sdxl
    adapter = load("subject_ref/ms_adapter.bin")
    context = context_for(2)
    off = Apply().apply(model, adapter, encode(vision, adapter, clip, weight=0.0))[0]
    assert torch.equal(sdxl_forward(off, context), sdxl_forward(model, context))
    on = Apply().apply(model, adapter, encode(vision, adapter, clip))[0]
    assert not torch.equal(sdxl_forward(on, context), sdxl_forward(model, context))
    late = replace_at(Apply().apply(model, adapter, encode(vision, adapter, clip, start=0.5, end=1.0))[0], ("input", 4, 0))
    sampling = model.get_model_object("model_sampling")
    key = subject_patch.SAMPLING_KEY
    assert late.state.active({"sigmas": torch.tensor([float(sampling.percent_to_sigma(0.2))]), key: sampling}) == []
    assert late.state.active({"sigmas": torch.tensor([float(sampling.percent_to_sigma(0.7))]), key: sampling}) == [0]


def test_dual_cfg_middle_branch_carries_the_subjects(folders, sdxl, vision):
    model, clip = sdxl
    adapter = load("subject_ref/ms_adapter.bin")
    patch = replace_at(Apply().apply(model, adapter, encode(vision, adapter, clip))[0], ("input", 4, 0))
    table = pack.core.subjects
    q = torch.randn(3, 16, 64, generator=torch.Generator().manual_seed(5))
    term = patch.image_term(q, _options(4, 4, 4, cond_or_uncond=(0, 1, 2), **{table.BRANCH_TABLE_KEY: table.BRANCHES_DUAL_CFG}))
    single = patch.image_term(q[1:2], _options(4, 4, 4, cond_or_uncond=(0,)))
    assert torch.equal(term[0], torch.zeros_like(term[0]))                      # negative
    torch.testing.assert_close(term[1:2], single)                                # middle (empty prompt + subjects)


# --- composition and end to end ----------------------------------------------------------------------------

def test_perfusion_concept_and_foreign_patches_compose(folders, sdxl, vision, monkeypatch):
    model, clip = sdxl
    concept = host.concept_for(pack, model, clip, trigger="sks", seed=0)
    with_concept = pack.nodes.model_patch.apply_concept(model, concept, 1.0)
    calls = []

    def foreign(q, k, v, extra_options):
        calls.append(tuple(extra_options["block"]))
        import comfy.ldm.modules.attention as attention
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])
    with_concept.set_model_attn2_replace(foreign, "output", 3, 0)               # another pack, before ours
    adapter = load("subject_ref/ms_adapter.bin")
    both = Apply().apply(with_concept, adapter, two_subjects(vision, adapter, clip))[0]
    stack = pack.core.concept_stack.ConceptStack
    counted = []
    for name in ("key_forward", "value_forward"):
        original = getattr(stack, name)

        def counting(self, *a, _f=original, **k):
            counted.append(1)
            return _f(self, *a, **k)
        monkeypatch.setattr(stack, name, counting)
    context = context_for()
    out_both = sdxl_forward(both, context)
    layers = len(pack.nodes.model_patch.cross_attention_layers(model))
    assert len(counted) == 2 * layers                                            # the K/V edit fires on every layer
    assert calls == [("output", 3)]                                              # wrapped, not overwritten
    later = both.clone()
    added = []
    replace_at(later, ("input", 5, 1)).add(lambda out, q, k, v, eo, **kw: added.append(kw["tag"]) or torch.zeros_like(out),
                                            tag="x", sigma_start=1e9, sigma_end=0.0)
    sdxl_forward(later, context)
    assert added == ["x"]
    out_concept = sdxl_forward(with_concept, context)
    assert not torch.equal(out_both, out_concept)


def test_non_square_latent_through_ksampler(folders, sdxl, vision):
    model, clip = sdxl
    adapter = load("subject_ref/ms_adapter.bin")
    patched = Apply().apply(model, adapter, two_subjects(vision, adapter, clip), scale=0.6)[0]
    positive = comfy_nodes.CLIPTextEncode().encode(clip, "a dog and a cat on the beach")[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    latent = {"samples": torch.zeros(1, 4, 8, 12)}                             # 64 x 96 px: 2:3, not square
    out = comfy_nodes.common_ksampler(patched, 0, 2, 5.0, "euler", "normal", positive, negative, latent)[0]["samples"]
    plain = comfy_nodes.common_ksampler(model, 0, 2, 5.0, "euler", "normal", positive, negative, latent)[0]["samples"]
    assert out.shape == (1, 4, 8, 12) and torch.isfinite(out).all() and not torch.equal(out, plain)
    assert adapter.patcher in patched.get_additional_models_with_key(subject_patch.ADDITIONAL_MODELS_KEY)


# --- the template through the real server ------------------------------------------------------------------

MS_TEMPLATE = "Perfusion - MS-Diffusion Two Subjects and a Concept (SDXL).json"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real ComfyUI server (tests/server_helpers.py) with an MS-Diffusion file for the tiny SDXL model of the
    test pack (same seeds, same widths), an SDXL Perfusion concept and the template's two subject photos."""
    from concept_factory import random_covariance
    from server_helpers import running_server
    from test_host_server import subject_photo
    with running_server(tmp_path_factory.mktemp("ms_server")) as server:
        model, clip = host.tiny_model("sdxl"), host.tiny_clip("sdxl")
        torch.save(ms_nested(pack, model, clip, seed=4), str(server.base / "models" / "subject_ref" / "ms_adapter.bin"))
        concept = host.concept_for(pack, model, clip, trigger="sks", seed=2,
                                   covariance=random_covariance(host.SDXL_L + host.SDXL_G, 3))
        pack.core.concept_file.write_concept(str(server.base / "models" / "perfusion" / "my_sdxl_concept.safetensors"), concept)
        workflow = json.load(open(os.path.join(host.ROOT, "workflows", MS_TEMPLATE)))
        for k, name in enumerate(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "LoadImage"):
            subject_photo(server.base / "input" / name, seed=k)
        yield server, workflow


def test_the_sdxl_template_runs_through_the_server(served):
    from workflow_api import to_api
    server, workflow = served
    info = server.get("/object_info")
    assert "subject_ref/ms_adapter.bin" in info["SubjectReferenceLoader"]["input"]["required"]["adapter_name"][0]
    assert MS_TEMPLATE[:-5] in server.get("/workflow_templates")["ComfyUI-Perfusion"]
    api = to_api(workflow, info)
    for node in api.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node.update(class_type="PerfusionTest_TinyCheckpoint", inputs={"family": "sdxl"})
        elif node["class_type"] == "CLIPVisionLoader":
            node.update(class_type="PerfusionTest_TinyClipVision", inputs={})
        elif node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=96, height=64)                          # not square
        elif node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    kinds = sorted(n["class_type"] for n in api.values())
    assert kinds.count("SubjectReferenceEncoder") == 2 and "PerfusionLoadConcept" in kinds
    encoders = [n for n in api.values() if n["class_type"] == "SubjectReferenceEncoder"]
    assert [n["inputs"]["phrase"] for n in encoders] == ["dog", "cat"] and all(isinstance(n["inputs"]["clip"], list) for n in encoders)

    def run(api):
        result = server.run(api, seconds=240)
        assert result["status"]["status_str"] == "success", result["status"]
        images = [img for out in result["outputs"].values() for img in out.get("images", [])]
        assert len(images) == 1
        from PIL import Image
        image = Image.open(server.base / "output" / images[0]["subfolder"] / images[0]["filename"])
        assert image.size == (96, 64)
        return image.tobytes()

    with_subjects = run(api)
    for node in encoders:
        node["inputs"]["weight"] = 0.0
    assert run(api) != with_subjects
    for node in encoders:
        node["inputs"].update(weight=1.0, phrase="")
    result = server.run(api)
    assert result["status"]["status_str"] == "error"
    message = json.dumps(result["status"]["messages"])
    assert "phrase" in message and "needs the subject's phrase" in message

