"""Host tests: "Train Subject Adapter" (subjref.v1) on a tiny SD1.5-shaped model in the real ComfyUI."""

import os

import pytest
import torch

import host  # skips this module without COMFYUI_PATH
import folder_paths
import nodes as comfy_nodes

pack = host.load_pack()
train_module = pack.nodes.subject_train
SubjectError = pack.core.errors.SubjectError
read_adapter = pack.core.subjref_adapter.read_adapter
RESOLUTION = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("subject_ref_train")
    saved = folder_paths.folder_names_and_paths.get("subject_ref")
    folder_paths.folder_names_and_paths["subject_ref"] = ([str(folder)], {".safetensors"})
    model, clip, vae = host.tiny_model("sd1", fan_in=True), host.tiny_clip("sd1"), host.tiny_vae()
    vision = host.tiny_clip_vision()
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    masks = torch.stack([(((xx - cx) ** 2 + (yy - cy) ** 2) < 0.2).float() for cx, cy in ((-0.3, 0), (0.3, 0.2), (0, -0.3))])
    images = (masks[..., None] * torch.tensor([0.9, 0.5, 0.2]) + 0.1 * torch.rand(3, 64, 64, 3, generator=g)).clamp(0, 1)
    try:
        yield folder, model, clip, vision, vae, images, masks
    finally:
        if saved is not None:
            folder_paths.folder_names_and_paths["subject_ref"] = saved


def trainer(setup, **kw):
    _, model, clip, vision, vae, images, masks = setup
    args = dict(preset="lite", lr=3e-3, batch_size=3, seed=0, resolution=RESOLUTION)
    args.update(kw)
    return train_module.SubjectTrainer(model, clip, vision, vae, images, masks,
                                       "a photo of a ball <subject1> on a table", **args)


def fixed_loss(t):
    """The loss of every image with its subject, over fixed noises and timesteps."""
    g = torch.Generator().manual_seed(123)
    pick = torch.arange(t.latents.shape[0])
    total = 0.0
    with torch.no_grad():
        for percent in (0.3, 0.6, 0.9):
            sigma = torch.full((len(pick),), t.sampling.percent_to_sigma(percent))
            noise = torch.randn(t.latents.shape, generator=g)
            total += t.loss(pick, sigma, noise, torch.ones(len(pick), dtype=torch.bool), t.captions).item()
    return total / 3


@pytest.mark.parametrize("preset", ["lite", "full"])
def test_three_steps_lower_the_loss_and_change_only_the_adapter(setup, preset):
    _, model, clip, vision, *_ = setup
    frozen = [host.state_hash(model.model), host.state_hash(clip.cond_stage_model), host.state_hash(vision.model)]
    flags = [p.requires_grad for p in model.model.parameters()]
    with torch.inference_mode():                      # as ComfyUI runs nodes
        t = trainer(setup, preset=preset)
    before_params = {k: v.detach().clone() for k, v in t.adapter.state_dict().items()}
    with t:
        before = fixed_loss(t)
        for step in range(3):
            t.step(step)
        after = fixed_loss(t)
    assert after < before, (before, after)
    changed = [k for k, v in t.adapter.state_dict().items() if not torch.equal(v, before_params[k])]
    assert any(k.startswith("fusers.") for k in changed) and "mask_in.weight" in changed
    assert any(k.startswith("cls_mlp.") for k in changed), changed
    assert any(k.startswith("grounding.") for k in changed), changed
    assert [host.state_hash(model.model), host.state_hash(clip.cond_stage_model), host.state_hash(vision.model)] == frozen
    assert [p.requires_grad for p in model.model.parameters()] == flags


def test_saved_file_reloads_identically_and_applies(setup):
    folder, model, clip, vision, vae, images, masks = setup
    with torch.inference_mode():
        out = train_module.SubjectReferenceTrain().train(model, clip, vision, vae, images, masks,
                                                         "a ball <subject1>\na red ball <subject1>\na ball", 2, 1e-3, 2,
                                                         "lite", 0, "trained", resolution=RESOLUTION)
        path, _, _, trained = train_module.train_subject_adapter(
            model, clip, vision, vae, images, masks, "a ball <subject1>", 2, 1e-3, 2, "lite", 0, "trained_again",
            resolution=RESOLUTION)
    adapter, name, curve = out["result"]
    assert name == "trained.safetensors" and curve.shape[-1] == 3 and adapter.backend == "subjref.v1"
    reloaded = read_adapter(path)
    assert set(reloaded.state_dict()) == set(trained)
    for k, v in trained.items():                         # the file holds exactly the trained weights (fp16)
        assert torch.equal(v, reloaded.state_dict()[k]), k
    initial = pack.core.subjref_adapter.SubjectAdapter(reloaded.config).initialise_(0).state_dict()
    assert any(not torch.equal(v, initial[k].half().float()) for k, v in trained.items())      # it did train
    assert not any(n.endswith(".tmp") for n in os.listdir(folder))
    # The trained adapter works at once: encode, apply, sample (in inference mode, as ComfyUI runs nodes).
    with torch.inference_mode():
        subjects = pack.nodes.SubjectReferenceEncoder().encode(vision, adapter, images[:1], 0.1, 0.1, 0.5, 0.5, 1.0,
                                                               0.0, 1.0, subject_mask=masks[:1])[0]
        patched = pack.nodes.SubjectReferenceApply().apply(model, adapter, subjects)[0]
        positive = pack.nodes.SubjectReferenceTextEncode().encode(clip, "a ball <subject1>", subjects, adapter)[0]
        negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = comfy_nodes.common_ksampler(patched, 0, 2, 4.0, "euler", "normal", positive, negative,
                                             {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"]
    assert torch.isfinite(latent).all()
    with pytest.raises(SubjectError, match="already exists"):
        train_module.train_subject_adapter(model, clip, vision, vae, images, masks, "x", 1, filename="trained")


def test_cancel_writes_nothing(setup):
    folder, model, clip, vision, vae, images, masks = setup
    seen = []
    with host.cancel_at_step(2, seen), torch.inference_mode():
        train_module.train_subject_adapter(model, clip, vision, vae, images, masks, "a ball", 20, 1e-3, 1,
                                           filename="cancelled", resolution=RESOLUTION)
    assert seen[-1] == 2
    assert not any(n.startswith("cancelled") or n.endswith(".tmp") for n in os.listdir(folder))


@pytest.mark.parametrize("change,message", [
    (dict(masks=None), "one MASK per image"),
    (dict(masks=torch.zeros(3, 64, 64)), "mask 1 is empty"),
    (dict(captions="a\nb"), "2 lines for 3 images"),
    (dict(captions="a <subject2>"), "another placeholder"),
    (dict(preset="huge"), "preset"),
])
def test_bad_input_is_refused_and_writes_nothing(setup, change, message):
    folder, model, clip, vision, vae, images, masks = setup
    args = dict(masks=masks, captions="a ball <subject1>", preset="lite")
    args.update(change)
    with pytest.raises(SubjectError, match=message):
        train_module.train_subject_adapter(model, clip, vision, vae, images, args["masks"], args["captions"], 1,
                                           preset=args["preset"], filename="bad", resolution=RESOLUTION)
    assert not any(n.startswith("bad") for n in os.listdir(folder))


def test_sdxl_shaped_model_trains(setup):
    _, _, _, vision, vae, images, masks = setup
    model, clip = host.tiny_model("sdxl"), host.tiny_clip("sdxl")
    with torch.inference_mode():
        t = train_module.SubjectTrainer(model, clip, vision, vae, images, masks, "a ball <subject1>",
                                        preset="lite", lr=1e-3, batch_size=2, resolution=RESOLUTION)
    assert dict(t.adapter.config.towers) == {"l": host.SDXL_L, "g": host.SDXL_G}
    with t:
        losses = [t.step(k) for k in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
