"""Host test on the committed toy-world model (bench/toyworld/): a short "Train Perfusion Concept" run
through the real nodes leaves the base weights untouched. The issue's two claims, that it makes the
concept recognisable (fidelity clearly above the superclass prompt's) and that a higher beta takes it
away, are strict xfails: the benchmark (docs/toyworld/report.md) measures both failing here."""

import os
import sys

import pytest

import host  # skips this module without COMFYUI_PATH
import folder_paths
import torch

BENCH = os.path.join(host.ROOT, "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
from toyworld import benchmark, evaluator, graph, world  # noqa: E402
from toyworld import model as toy  # noqa: E402

pack = host.load_pack()
covariance_cache = pack.nodes.covariance_cache
STEPS = benchmark.STEPS     # as the benchmark, whose figures the thresholds below are checked against
SAMPLES = 16
# the bar; the benchmark (docs/toyworld/report.md) measures Perfusion below it on this model
LIFT = 0.3            # trained fidelity above the base model's superclass prompt
DROP = 0.2            # fidelity lost from beta 0.7 to beta 2.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not os.path.exists(toy.BUNDLE) or not os.path.exists(evaluator.WEIGHTS):
        pytest.fail(f"the committed toy-world model is missing ({toy.BUNDLE}, {evaluator.WEIGHTS}); "
                    "run `python -m toyworld.pretrain` and `python -m toyworld.evaluator` in bench/")
    folder = tmp_path_factory.mktemp("toyworld")
    saved = folder_paths.folder_names_and_paths.get("perfusion")
    folder_paths.folder_names_and_paths["perfusion"] = ([str(folder)], {".safetensors"})
    original_corpus = covariance_cache.CORPUS
    covariance_cache.CORPUS = graph.world_corpus()     # C over the world's captions, as the benchmark
    try:
        base = toy.load()
        concept = next(c for c in world.CONCEPTS if c.name == benchmark.QUICK_CONCEPT)
        result = benchmark.train_perfusion(pack, base, concept, seed=0, steps=STEPS)
        yield base, concept, result
    finally:
        covariance_cache.CORPUS = original_corpus
        if saved is None:
            folder_paths.folder_names_and_paths.pop("perfusion", None)
        else:
            folder_paths.folder_names_and_paths["perfusion"] = saved


@pytest.fixture(scope="module")
def fidelities(trained):
    """P(concept) on "a photo of a <superclass>" (base model), "a photo of a <trigger>" at beta 0.7 and 2."""
    (unet, clip, vae), concept, result = trained
    net = evaluator.load()
    return (fidelity(net, unet, clip, vae, concept, concept.superclass),
            fidelity(net, *result.variant((0.7, 1.0)), vae, concept, result.word),
            fidelity(net, *result.variant((2.0, 1.0)), vae, concept, result.word))


def fidelity(net, model, clip, vae, concept, word):
    images = graph.sample(model, clip, vae, f"{benchmark.PREFIX} a {word}", SAMPLES, seed=5)
    return float(evaluator.read(net, images)["concept"][:, world.ALL_CONCEPTS.index(concept) + 1].mean())


@pytest.mark.xfail(strict=True, reason="measured in docs/toyworld/report.md: 200 steps of Perfusion make split-square "
                   "recognisable in 0.01 / 0.09 / 0.00 of samples (seeds 0-2) at beta 0.7 (all concepts: 0.08 +- 0.02; "
                   "LoRA rank 8: 0.69 +- 0.05); strict, so that a fix shows up here")
def test_training_lifts_fidelity_above_the_superclass_prompt(fidelities):
    base, default, _ = fidelities
    assert default > base + LIFT, (base, default)


@pytest.mark.xfail(strict=True, reason="measured in docs/toyworld/report.md: from beta 0.7 to 2 fidelity falls only from "
                   "0.08 to 0.03 (all concepts, 3 seeds); strict, so that a change shows up here")
def test_a_higher_beta_lowers_fidelity_again(fidelities):
    _, default, high_beta = fidelities
    assert high_beta < default - DROP, (default, high_beta)


def test_base_weights_untouched(trained):
    (unet, clip, vae), _, _ = trained
    fresh_unet, _, _ = toy.load()
    for (name, a), b in zip(unet.model.diffusion_model.state_dict().items(), fresh_unet.model.diffusion_model.state_dict().values()):
        assert torch.equal(a, b), name
