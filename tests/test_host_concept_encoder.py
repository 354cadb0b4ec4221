"""Host tests: a concept belongs to a text encoder and a layer of it. The layer is recorded, checked at
load and at encode time; concepts combine when their encoders' fingerprints agree."""

import logging

import pytest

import host  # skips this module without COMFYUI_PATH
import torch

import folder_paths
import nodes as comfy_nodes

pack = host.load_pack()
Load = pack.nodes.PerfusionLoadConcept
ConceptError = pack.core.errors.ConceptError
fingerprints = pack.core.encoder_fingerprint
write_concept = pack.core.concept_file.write_concept
covariance_cache = pack.nodes.covariance_cache


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("perfusion_encoder")
    folder_paths.add_model_folder_path("perfusion", str(folder))
    model, clip = host.tiny_model("sd1"), host.tiny_clip("sd1")
    fp = covariance_cache.encoder_fingerprint(clip)
    return folder, model, clip, fp


def concept(world, name, trigger, **info):
    folder, model, clip, fp = world
    c = host.concept_for(pack, model, clip, trigger=trigger, seed=len(name),
                         info={"perfusion.encoder_fingerprint": fingerprints.to_text(fp), **info})
    write_concept(str(folder / name), c, overwrite=True)
    return name


def at_layer(clip, layer):
    return comfy_nodes.CLIPSetLastLayer().set_last_layer(clip, layer)[0]


def test_layer_is_checked_at_load(world):
    folder, model, clip, fp = world
    name = concept(world, "layer2.safetensors", "sks", **{"perfusion.clip_layer": "-2"})
    with pytest.raises(ConceptError, match=r"trained at the text encoder's layer -2, but this CLIP encodes at layer "
                                           r"-1 \(last\); set 'CLIP Set Last Layer' to -2"):
        Load().load(model, clip, name, 1.0)
    patched_model, patched_clip = Load().load(model, at_layer(clip, -2), name, 1.0)
    assert torch.isfinite(patched_clip.encode_from_tokens(patched_clip.tokenize("a photo of sks"))).all()


def test_layer_changed_after_the_loader_is_caught_at_encode(world):
    folder, model, clip, fp = world
    name = concept(world, "layer2b.safetensors", "sks", **{"perfusion.clip_layer": "-2"})
    _, patched_clip = Load().load(model, at_layer(clip, -2), name, 1.0)
    moved = at_layer(patched_clip, -3)                                # CLIPSetLastLayer after the loader
    with pytest.raises(ConceptError, match=r"layer -2, but this CLIP encodes at layer -3"):
        comfy_nodes.CLIPTextEncode().encode(moved, "a photo of sks")


def test_file_without_a_layer_reads_as_the_default(world):
    """Files made before perfusion.clip_layer: SD1's default layer (last; CLIPSetLastLayer -1 is the same)."""
    folder, model, clip, fp = world
    name = concept(world, "nolayer.safetensors", "sks")
    assert "perfusion.clip_layer" not in pack.core.concept_file.read_metadata(str(folder / name))
    Load().load(model, clip, name, 1.0)
    Load().load(model, at_layer(clip, -1), name, 1.0)
    with pytest.raises(ConceptError, match=r"layer -1 \(last\), but this CLIP encodes at layer -2"):
        Load().load(model, at_layer(clip, -2), name, 1.0)


def test_concepts_of_one_encoder_combine_across_cache_keys(world):
    """Two concepts trained on one checkpoint whose covariance was computed twice (another key) still
    combine: their fingerprints agree. Before this, the keys alone decided and they were refused."""
    folder, model, clip, fp = world
    first = concept(world, "one.safetensors", "sks", **{"perfusion.clip_layer": "last"})
    second = host.concept_for(pack, model, clip, trigger="ohwx", seed=7, covariance_sha256="cd" * 32,
                              info={"perfusion.encoder_fingerprint": fingerprints.to_text(fp * (1 + 1e-4))})
    write_concept(str(folder / "two.safetensors"), second, overwrite=True)
    m, c = Load().load(model, clip, first, 1.0)
    m, c = Load().load(m, c, "two.safetensors", 1.0)
    assert pack.nodes.model_patch.concept_stack(m).triggers == ("sks", "ohwx")


def test_concepts_of_different_encoders_are_refused_by_name(world):
    folder, model, clip, fp = world
    first = concept(world, "mine.safetensors", "sks")
    other_fp = covariance_cache.encoder_fingerprint(host.tiny_clip("sd1", seed=9))
    theirs = host.concept_for(pack, model, clip, trigger="ohwx", seed=8, covariance_sha256="ef" * 32,
                              info={"perfusion.encoder_fingerprint": fingerprints.to_text(other_fp)})
    write_concept(str(folder / "theirs.safetensors"), theirs, overwrite=True)
    m, c = Load().load(model, clip, first, 1.0)
    with pytest.raises(ConceptError, match=r"concepts 'mine.safetensors' and 'theirs.safetensors' were trained on "
                                           r"different text encoders: their encodings of the probe prompts differ by"):
        Load().load(m, c, "theirs.safetensors", 1.0)


def test_old_file_combines_with_a_warning(world, caplog):
    folder, model, clip, fp = world
    first = concept(world, "new.safetensors", "sks")
    old = host.concept_for(pack, model, clip, trigger="ohwx", seed=9, covariance_sha256="01" * 32, info={})
    write_concept(str(folder / "old.safetensors"), old, overwrite=True)
    m, c = Load().load(model, clip, first, 1.0)
    with caplog.at_level(logging.WARNING, logger="perfusion"):
        m, c = Load().load(m, c, "old.safetensors", 1.0)
    assert "'old.safetensors' predates text-encoder fingerprints" in caplog.text
    assert pack.nodes.model_patch.concept_stack(m).triggers == ("sks", "ohwx")
