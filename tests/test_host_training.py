"""Host tests: "Train Perfusion Concept" on a tiny SD1.5-shaped model in the real ComfyUI."""

import os

import pytest

import host  # skips this module without COMFYUI_PATH
import torch

import comfy.model_management
import comfy.utils
import folder_paths

pack = host.load_pack()
train_module = pack.nodes.train_concept
covariance_cache = pack.nodes.covariance_cache
ConceptError = pack.core.errors.ConceptError
read_concept = pack.core.concept_file.read_concept
Load = pack.nodes.PerfusionLoadConcept
STEPS = 30
# A random tiny UNet attends almost uniformly over 77 tokens, so one token's value target needs to
# grow ~77x larger than in a trained model to move the output: larger learning rates than the paper's.
LEARN_LR_VALUES, LEARN_LR_EMBEDDING = 0.3, 0.03
QUERY_SHARPNESS, OUTPUT_GAIN = 6.0, 8.0


def trained_like(model):
    """Two traits of a trained UNet that a random one lacks and that give a concept its leverage:
    cross-attention that picks out content tokens instead of averaging over ~70 padding tokens
    (sharper queries), and an output that depends on the features (a stronger final layer)."""
    with torch.no_grad():
        for module in pack.nodes.model_patch.cross_attention_layers(model).values():
            module.to_q.weight.mul_(QUERY_SHARPNESS)
        model.model.diffusion_model.out[-1].weight.mul_(OUTPUT_GAIN)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("perfusion_train")
    saved = folder_paths.folder_names_and_paths.get("perfusion")
    folder_paths.folder_names_and_paths["perfusion"] = ([str(folder)], {".safetensors"})
    corpus = folder / "captions_subset.txt"
    corpus.write_text("\n".join(covariance_cache.read_corpus(covariance_cache.SHIPPED_CORPUS)[:2000]) + "\n")
    original_corpus = covariance_cache.CORPUS
    covariance_cache.CORPUS = str(corpus)              # a slice keeps the tests in seconds
    model, clip, vae = trained_like(host.tiny_model("sd1", fan_in=True)), host.tiny_clip("sd1"), host.tiny_vae()
    g = torch.Generator().manual_seed(0)
    # a "subject": a bright disc on a dark background, in four positions
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    images = torch.stack([((xx - cx) ** 2 + (yy - cy) ** 2 < 0.25).float()[..., None].expand(64, 64, 3) * torch.tensor([0.9, 0.6, 0.2])
                          for cx, cy in ((0, 0), (0.2, 0.1), (-0.2, 0), (0, -0.2))]) + 0.05 * torch.rand(4, 64, 64, 3, generator=g)
    try:
        yield folder, model, clip, vae, images.clamp(0, 1)
    finally:
        covariance_cache.CORPUS = original_corpus
        if saved is not None:
            folder_paths.folder_names_and_paths["perfusion"] = saved


def train(setup, filename, steps=STEPS, seed=0, **kw):
    folder, model, clip, vae, images = setup
    args = dict(trigger="sks", superclass="teddy", steps=steps, batch_size=2, grad_accumulation=1,
                lr_embedding=0.006, lr_values=0.03, train_beta=0.75, train_tau=0.1, resolution=64, flip=True,
                masked_loss=True, seed=seed, filename=filename)
    args.update(kw)
    with torch.inference_mode():                      # as ComfyUI runs nodes
        return train_module.PerfusionTrainConcept().train(model, clip, vae, images, **args)


def fixed_loss(model, clip, vae, images, prompt):
    """Noise-prediction loss on the training images over fixed noises and timesteps, minus what the
    zero predictor scores on the same noises: a random UNet cannot predict the noise itself, so
    ~1.0 is a floor shared by every prompt; what a concept can remove is the excess above it."""
    with torch.inference_mode():
        latents = model.model.process_latent_in(vae.encode(images)).float()
        context = clip.encode_from_tokens(clip.tokenize(prompt)).repeat(latents.shape[0], 1, 1)
        ms = model.get_model_object("model_sampling")
        g = torch.Generator().manual_seed(123)
        excess = 0.0
        for percent in (0.2, 0.4, 0.6, 0.8):
            sigma = torch.full((latents.shape[0],), ms.percent_to_sigma(percent))
            noise = torch.randn(latents.shape, generator=g)
            x0_hat = host.unet_output(model, context, x=ms.noise_scaling(sigma, noise, latents), sigma=float(sigma[0]))
            eps_hat = (ms.noise_scaling(sigma, noise, latents) - x0_hat) / sigma.view(-1, 1, 1, 1)
            excess += torch.mean((eps_hat - noise) ** 2).item() - torch.mean(noise ** 2).item()
    return excess / 4


def test_training_learns_and_freezes_the_base_model(setup):
    folder, model, clip, vae, images = setup
    before = (host.state_hash(model.model), host.state_hash(clip.patcher.model))
    flags = [p.requires_grad for p in model.model.parameters()]
    out = train(setup, "learns", lr_values=LEARN_LR_VALUES, lr_embedding=LEARN_LR_EMBEDDING)
    trained_model, trained_clip, name, curve = out["result"]
    assert name == "learns.safetensors" and (folder / name).is_file()
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and curve.min() >= 0 and curve.max() <= 1
    # base weights bit-identical, flags restored, the input model carries no concept
    assert (host.state_hash(model.model), host.state_hash(clip.patcher.model)) == before
    assert [p.requires_grad for p in model.model.parameters()] == flags
    assert pack.nodes.model_patch.concept_stack(model) is None
    # it learned: lower loss than at its start (1 step) and than the superclass prompt on the base model
    start_model, start_clip, _, _ = train(setup, "start", steps=1, lr_values=LEARN_LR_VALUES, lr_embedding=LEARN_LR_EMBEDDING)["result"]
    trained = fixed_loss(trained_model, trained_clip, vae, images, "a photo of a sks")
    start = fixed_loss(start_model, start_clip, vae, images, "a photo of a sks")
    superclass = fixed_loss(model, clip, vae, images, "a photo of a teddy")
    print(f"excess loss over the zero predictor: trained {trained:.4f}, start {start:.4f}, superclass {superclass:.4f}")
    assert start > 0 and superclass > 0
    assert trained < 0.7 * start and trained < 0.7 * superclass, (trained, start, superclass)


def test_keys_stay_locked_to_the_superclass(setup):
    short = read_concept(str(setup[0] / train(setup, "short", steps=2)["result"][2]))
    long = read_concept(str(setup[0] / train(setup, "long", steps=8)["result"][2]))
    assert torch.equal(short.superclass_encoding, long.superclass_encoding)     # e_super fixed after batch 1
    assert not torch.equal(short.embeddings["clip_l"], long.embeddings["clip_l"])
    assert not torch.equal(short.i_star, long.i_star)                           # the EMA moves
    path = next(iter(short.v_targets))
    assert not torch.equal(short.v_targets[path], long.v_targets[path])


def test_saved_file_reproduces_the_trained_model(setup):
    """The node's outputs carry the concept as trained (float32, in memory); the file stores float16."""
    folder, model, clip, vae, images = setup
    trained_model, trained_clip, name, _ = train(setup, "reproduce", steps=5)["result"]
    loaded_model, loaded_clip = Load().load(model, clip, name, 1.0)
    in_memory = pack.nodes.model_patch.concept_stack(trained_model).concepts[0]
    from_file = read_concept(str(folder / name))
    assert not torch.equal(in_memory.v_targets[next(iter(in_memory.v_targets))],
                           from_file.v_targets[next(iter(from_file.v_targets))])     # really two sources
    ctx = trained_clip.encode_from_tokens(trained_clip.tokenize("a photo of sks"))
    ctx_file = loaded_clip.encode_from_tokens(loaded_clip.tokenize("a photo of sks"))
    assert torch.allclose(ctx, ctx_file, atol=1e-2, rtol=1e-2)
    trained_out, loaded_out = host.unet_output(trained_model, ctx), host.unet_output(loaded_model, ctx)
    scale = trained_out.abs().max()
    assert (trained_out - loaded_out).abs().max() < 2e-2 * scale
    assert not torch.equal(trained_out, host.unet_output(model, ctx))                   # and the concept acts
    assert name in Load.INPUT_TYPES()["required"]["concept_name"][0]          # listed without a restart
    assert not any(n.startswith("covariance") for n in Load.INPUT_TYPES()["required"]["concept_name"][0])


def test_keys_are_locked_to_the_superclass_token(setup):
    """e_super is the one-token superclass encoded in a training template at the trigger's position,
    the same encoding global key locking substitutes for the trigger; the trained concept's key at its
    own target input is g(1) W_k e_super."""
    folder, model, clip, vae, images = setup
    trained_model, trained_clip, name, _ = train(setup, "keylock", steps=1, batch_size=1, grad_accumulation=1)["result"]
    concept = pack.nodes.model_patch.concept_stack(trained_model).concepts[0]
    close = lambda a, b: torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    superclass_token = clip.tokenize("teddy")["l"][0][1][0]
    matches = []
    for template in pack.core.training.TEMPLATES:
        tokens = clip.tokenize(template.format("teddy"))
        ids = [t[0] for t in tokens["l"][0]]
        matches.append(close(concept.superclass_encoding, clip.encode_from_tokens(tokens)[0][ids.index(superclass_token)]))
        # global key locking: the superclass version of the trigger prompt has that very token there
        _, _, extra = trained_clip.cond_stage_model.encode_token_weights(trained_clip.tokenize(template.format("sks")))
        superclass_context = extra["model_conds"][pack.core.concept_stack.SUPER_CONTEXT_KEY].cond[0]
        assert close(superclass_context, clip.encode_from_tokens(tokens)[0])
    assert any(matches)
    stack = pack.nodes.model_patch.concept_stack(trained_model)
    path, layer = next(iter(pack.nodes.model_patch.cross_attention_layers(model).items()))
    to_k = layer.to_k
    plain = type(to_k).forward.__get__(to_k)
    key = stack.key_forward(path, plain, concept.i_star[None, None])
    gate = torch.sigmoid(torch.tensor((1 - 0.7) / 0.15))
    assert torch.allclose(key, gate * plain(concept.superclass_encoding[None, None]), atol=1e-4, rtol=1e-3)


def test_the_objective_matches_comfyuis_parameterisation():
    """x0_hat = a x - b m for the model output m: the model's own loss ||m - m*||^2 is ||x0_hat - x0||^2 / b^2."""
    import comfy.model_sampling as ms_module
    for kind, v in ((ms_module.EPS, False), (ms_module.V_PREDICTION, True)):
        class Sampling(ms_module.ModelSamplingDiscrete, kind):
            pass
        ms = Sampling()
        sigma = torch.tensor([0.3, 2.0, 9.0])
        x = torch.zeros(3, 1, 1, 1)
        b = ms.calculate_denoised(sigma, torch.zeros(3, 1, 1, 1), x) - ms.calculate_denoised(sigma, torch.ones(3, 1, 1, 1), x)
        expected = 1.0 / b.reshape(-1) ** 2
        got = pack.core.training.objective_weight(sigma, v, float(getattr(ms, "sigma_data", 1.0)))
        assert torch.allclose(got, expected, rtol=1e-5), (kind, got, expected)


def test_an_fp16_model_trains_like_fp32(setup):
    """fp16 has too little range for these gradients; the trainer computes in fp32 (bf16 on CUDA)."""
    folder, _, clip, vae, images = setup
    half = host.tiny_model("sd1", fan_in=True, dtype=torch.float16)
    full = host.tiny_model("sd1", fan_in=True)
    with torch.no_grad():
        for p in full.model.diffusion_model.parameters():
            p.copy_(p.half().float())                                  # the same (fp16-rounded) weights
    results = []
    for model, name in ((half, "fp16"), (full, "fp32")):
        with torch.inference_mode():
            out = train_module.PerfusionTrainConcept().train(model, clip, vae, images, "sks", "teddy", 2, 2, 1,
                                                             0.006, 0.03, 0.75, 0.1, 64, True, True, 0, f"dtype_{name}")
        results.append(read_concept(str(folder / out["result"][2])))
    assert half.model.get_dtype() == torch.float16 and half.model.manual_cast_dtype is None   # input untouched
    for path in results[0].v_targets:
        assert torch.allclose(results[0].v_targets[path], results[1].v_targets[path], atol=2e-3, rtol=1e-2)
    assert torch.allclose(results[0].embeddings["clip_l"], results[1].embeddings["clip_l"], atol=2e-3, rtol=1e-2)


def test_same_seed_same_file(setup):
    a = read_concept(str(setup[0] / train(setup, "seed_a", steps=3, seed=7)["result"][2]))
    b = read_concept(str(setup[0] / train(setup, "seed_b", steps=3, seed=7)["result"][2]))
    c = read_concept(str(setup[0] / train(setup, "seed_c", steps=3, seed=8)["result"][2]))
    for key in ("i_star", "G_i_star", "superclass_encoding"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert all(torch.equal(a.v_targets[p], b.v_targets[p]) for p in a.v_targets)
    assert torch.equal(a.embeddings["clip_l"], b.embeddings["clip_l"])
    assert {k: v for k, v in a.info.items() if k != "perfusion.date"} == \
           {k: v for k, v in b.info.items() if k != "perfusion.date"}
    assert not torch.equal(a.embeddings["clip_l"], c.embeddings["clip_l"])


def test_cancel_stops_within_a_step_and_writes_nothing(setup):
    folder = setup[0]
    seen = []
    with host.cancel_at_step(3, seen):
        train(setup, "cancelled", steps=50)
    assert seen[-1] == 3             # (a first run also shows the covariance bar before it)
    assert not any(n.startswith("cancelled") or n.endswith(".tmp") for n in os.listdir(folder))


def test_gradient_checkpointing_gives_the_same_concept(setup):
    folder = setup[0]
    plain = read_concept(str(folder / train(setup, "no_checkpointing", steps=3)["result"][2]))
    checkpointed = read_concept(str(folder / train(setup, "checkpointing", steps=3, gradient_checkpointing=True)["result"][2]))
    for path in plain.v_targets:
        assert torch.allclose(plain.v_targets[path], checkpointed.v_targets[path], atol=1e-5)
    assert torch.allclose(plain.embeddings["clip_l"], checkpointed.embeddings["clip_l"], atol=1e-6)
    assert pack.nodes.train_concept.PerfusionTrainConcept.INPUT_TYPES()["optional"]["gradient_checkpointing"][1]["default"] is False


def test_a_bfloat16_model_trains(setup):
    folder, _, clip, vae, images = setup
    model = host.tiny_model("sd1", fan_in=True, dtype=torch.bfloat16)
    assert model.model.get_dtype() == torch.bfloat16
    with torch.inference_mode():
        out = train_module.PerfusionTrainConcept().train(
            model, clip, vae, images, "sks", "teddy", 3, 2, 1, 0.006, 0.03, 0.75, 0.1, 64, True, True, 0, "bf16")
    concept = read_concept(str(folder / out["result"][2]))
    assert all(torch.isfinite(v).all() for v in concept.v_targets.values())
    ctx = out["result"][1].encode_from_tokens(out["result"][1].tokenize("a photo of sks"))
    assert torch.isfinite(host.unet_output(out["result"][0], ctx)).all()


def test_sdxl_shaped_model_trains_both_towers(setup):
    folder, _, _, vae, images = setup
    model, clip = host.tiny_model("sdxl", fan_in=True), host.tiny_clip("sdxl")
    with torch.inference_mode():
        out = train_module.PerfusionTrainConcept().train(
            model, clip, vae, images, "sks", "dog", 2, 2, 1, 0.006, 0.03, 0.75, 0.1, 64, True, True, 0, "xl_trained")
    concept = read_concept(str(folder / out["result"][2]))
    assert concept.model == "sdxl" and set(concept.embeddings) == {"clip_l", "clip_g"}
    assert concept.context_dim == host.SDXL_L + host.SDXL_G and len(concept.v_targets) == 28
    loaded_model, loaded_clip = Load().load(model, clip, out["result"][2], 1.0)
    tokens = loaded_clip.tokenize("a photo of sks")
    assert all(any(torch.is_tensor(t[0]) for t in tokens[k][0]) for k in ("l", "g"))


def test_masks_are_used(setup):
    folder, model, clip, vae, images = setup
    masks = torch.zeros(4, 64, 64)
    masks[:, 16:48, 16:48] = 1.0
    a = read_concept(str(folder / train(setup, "masked", steps=2, masks=masks)["result"][2]))
    b = read_concept(str(folder / train(setup, "unmasked", steps=2)["result"][2]))
    path = next(iter(a.v_targets))
    assert not torch.equal(a.v_targets[path], b.v_targets[path])


@pytest.mark.parametrize("change,message", [
    (dict(images=torch.zeros(0, 64, 64, 3)), "images: no images"),
    (dict(masks=torch.ones(3, 64, 64)), "masks: 3 masks for 4 images"),
    (dict(masks=torch.cat([torch.ones(3, 64, 64), torch.zeros(1, 64, 64)])), "mask 4 is empty"),
    (dict(trigger="hugsyplushie"), "'hugsyplushie' is .* tokens"),
    (dict(trigger="two words"), "trigger 'two words': expected one word"),
    (dict(superclass=" "), "superclass: expected"),
    (dict(filename="../escape"), "no folders, no '..'"),
    (dict(filename="learns"), "'learns.safetensors' already exists"),
    (dict(images=torch.full((4, 64, 64, 3), float("nan"))), "images: some pixels are NaN"),
    (dict(masks=torch.ones(4, 32, 32)), "masks: 32x32 pixels, the images are 64x64"),
    (dict(steps=4, lr_values=1e20, lr_embedding=1e20), "training diverged at step"),
    (dict(superclass="teddy bear"), "superclass 'teddy bear' is 2 tokens .* one-token word .* 'teddy' or 'bear'"),
])
def test_bad_input_is_refused_and_writes_nothing(setup, change, message):
    folder, model, clip, vae, images = setup
    before = sorted(os.listdir(folder))
    args = dict(trigger="sks", superclass="teddy", steps=2, batch_size=2, grad_accumulation=1, lr_embedding=0.006,
                lr_values=0.03, train_beta=0.75, train_tau=0.1, resolution=64, flip=True, masked_loss=True, seed=0,
                filename="bad_input")
    args.update({k: v for k, v in change.items() if k != "images"})
    if not (folder / "learns.safetensors").exists():
        (folder / "learns.safetensors").write_bytes(b"placeholder")
    before = sorted(os.listdir(folder))
    with pytest.raises(ConceptError, match=message):
        with torch.inference_mode():
            train_module.PerfusionTrainConcept().train(model, clip, vae, change.get("images", images), **args)
    assert sorted(os.listdir(folder)) == before


def test_model_with_concepts_is_refused(setup):
    folder, model, clip, vae, images = setup
    concept = host.concept_for(pack, model, clip, trigger="ohwx")
    pack.core.concept_file.write_concept(str(folder / "other.safetensors"), concept)
    patched, patched_clip = Load().load(model, clip, "other.safetensors", 1.0)
    with pytest.raises(ConceptError, match="already carries Perfusion concepts"):
        with torch.inference_mode():
            train_module.PerfusionTrainConcept().train(patched, patched_clip, vae, images, "sks", "dog", 1, 1, 1, 0.006,
                                                       0.03, 0.75, 0.1, 64, True, True, 0, "refused")


def test_shipped_corpus_and_covariance_cache(setup):
    folder, model, clip, vae, images = setup
    captions = covariance_cache.read_corpus(covariance_cache.SHIPPED_CORPUS)
    assert len(captions) >= 10000 and len(set(captions)) == len(captions)
    encoder = covariance_cache.covariance_for(clip, show_progress=False)
    cached = folder / "covariance" / f"{encoder.key}.safetensors"
    assert cached.is_file()
    C = encoder.covariance
    assert torch.allclose(C, C.T) and torch.linalg.eigvalsh(C)[0] > 0
    info = encoder.concept_info()
    assert info["perfusion.clip_layer"] == "last"
    assert 0 < float(info["perfusion.covariance_shrinkage"]) < 1
    assert float(info["perfusion.covariance_condition"]) <= pack.core.covariance.MAX_CONDITION
    # the key follows the encodings: whether the CLIP happened to be loaded does not change it, nor a
    # clone; a LoRA on the CLIP (and its strength) and another layer give another covariance
    comfy.model_management.unload_all_models()
    assert covariance_cache.covariance_for(clip.clone(), show_progress=False).key == encoder.key
    name = next(k for k in clip.patcher.model.state_dict() if k.endswith("layers.0.mlp.fc1.weight"))
    delta = 0.05 * torch.randn(clip.patcher.model.state_dict()[name].shape, generator=torch.Generator().manual_seed(0))
    small = folder / "captions_small.txt"                  # the keys, not the numbers, are under test here
    small.write_text("\n".join(captions[:40]) + "\n")
    before = set((folder / "covariance").glob("*.safetensors"))
    variants = []
    for strength in (1.0, 0.5):
        loraed = clip.clone()
        loraed.add_patches({name: (delta,)}, strength)
        variants.append(loraed)
    other = clip.clone()
    other.clip_layer(-2)
    keys = {covariance_cache.covariance_for(c, show_progress=False, corpus_path=str(small)).key
            for c in [clip] + variants + [other]}
    assert len(keys) == 4 and encoder.key not in keys      # another corpus is another covariance too
    assert len(set((folder / "covariance").glob("*.safetensors")) - before) == 4
    assert covariance_cache.covariance_for(variants[1], show_progress=False, corpus_path=str(small)).key in keys


def _clip_copy(clip, dtype=None, garbage_projection=False):
    """A second CLIP object with the same weights, as another load of the same checkpoint gives:
    optionally stored in another dtype, and with a text_projection that holds whatever memory held
    (SD1.5 files carry none; ComfyUI leaves it uninitialised)."""
    copy = host.tiny_clip("sd1")
    state = {k: v.clone() for k, v in clip.cond_stage_model.state_dict().items()}
    copy.cond_stage_model.load_state_dict(state)
    with torch.no_grad():
        if garbage_projection:
            for k, p in copy.cond_stage_model.named_parameters():
                if k.endswith("text_projection.weight"):
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(99)) * 1e3)
        if dtype is not None:
            copy.cond_stage_model.to(dtype)
    return copy


def test_covariance_key_ignores_what_the_cond_does_not_see(setup):
    """Today's users: the same checkpoint loaded again (uninitialised text_projection), stored in
    another dtype, gives the same key and reuses the cache file instead of writing a new one."""
    folder, model, clip, vae, images = setup
    first = covariance_cache.covariance_for(clip, show_progress=False)
    files = sorted((folder / "covariance").glob("*.safetensors"))
    projection = next(k for k in clip.cond_stage_model.state_dict() if k.endswith("text_projection.weight"))
    reloaded = _clip_copy(clip, garbage_projection=True)
    assert not torch.equal(reloaded.cond_stage_model.state_dict()[projection], clip.cond_stage_model.state_dict()[projection])
    assert covariance_cache.covariance_for(reloaded, show_progress=False).key == first.key
    fingerprint = pack.core.encoder_fingerprint
    half = _clip_copy(clip, dtype=torch.bfloat16)
    d_half = fingerprint.distance(covariance_cache.encoder_fingerprint(half), first.fingerprint)
    assert 0 < d_half < fingerprint.TOLERANCE / 2, d_half          # bf16 storage AND compute: still one encoder
    assert covariance_cache.covariance_for(half, show_progress=False).key == first.key
    assert sorted((folder / "covariance").glob("*.safetensors")) == files     # nothing recomputed
    # another encoder is far outside the tolerance
    other = host.tiny_clip("sd1", seed=5)
    assert fingerprint.distance(covariance_cache.encoder_fingerprint(other), first.fingerprint) > 10 * fingerprint.TOLERANCE


def test_non_finite_encoder_is_refused_by_name(setup):
    folder, model, clip, vae, images = setup
    broken = _clip_copy(clip)
    with torch.no_grad():
        next(p for k, p in broken.cond_stage_model.named_parameters() if k.endswith("layers.1.mlp.fc2.weight")).fill_(float("nan"))
    before = sorted(os.listdir(folder))
    with pytest.raises(ConceptError, match=r"text encoder \(SD1ClipModel at layer last\) gives NaN or Inf"):
        covariance_cache.covariance_for(broken, show_progress=False)
    assert sorted(os.listdir(folder)) == before


def test_training_records_the_clip_layer_and_the_covariance(setup):
    """Trained behind CLIPSetLastLayer -2 (routine for SD1.5 anime checkpoints): the file says so, its
    covariance is the one at -2, and it loads only where the CLIP encodes at -2."""
    import nodes as comfy_nodes
    folder, model, clip, vae, images = setup
    clip2 = comfy_nodes.CLIPSetLastLayer().set_last_layer(clip, -2)[0]
    args = dict(trigger="sks", superclass="teddy", steps=1, batch_size=1, grad_accumulation=1, lr_embedding=0.006,
                lr_values=0.03, train_beta=0.75, train_tau=0.1, resolution=64, flip=True, masked_loss=True, seed=0,
                filename="layer_minus_2")
    with torch.inference_mode():
        out = train_module.PerfusionTrainConcept().train(model, clip2, vae, images, **args)
    name = out["result"][2]
    meta = pack.core.concept_file.read_metadata(str(folder / name))
    encoder = covariance_cache.covariance_for(clip2, show_progress=False)
    assert meta["perfusion.clip_layer"] == "-2" and meta["perfusion.model"] == "sd1"
    assert meta["perfusion.covariance_sha256"] == encoder.key
    assert meta["perfusion.covariance_shrinkage"] == encoder.info["perfusion.covariance_shrinkage"]
    assert float(meta["perfusion.covariance_condition"]) <= pack.core.covariance.MAX_CONDITION
    assert pack.core.encoder_fingerprint.same_encoder(
        pack.core.encoder_fingerprint.from_text(meta["perfusion.encoder_fingerprint"]), encoder.fingerprint)
    Load().load(model, clip2, name, 1.0)
    with pytest.raises(ConceptError, match="layer -2, but this CLIP encodes at layer -1"):
        Load().load(model, clip, name, 1.0)
