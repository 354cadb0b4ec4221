"""Host test on the committed toy-world model (bench/toyworld/): a short "Train Perfusion Concept" run
makes the concept recognisable (the evaluator's fidelity clearly above the superclass prompt's), and a
higher gate bias beta takes it away again. Thresholds come from the benchmark's figures
(bench/results/toyworld/), with room for the test's smaller sample."""

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
STEPS = 120
SAMPLES = 16
# calibrated on the benchmark (bench/results/toyworld/report.md): see the README's toy-world figures
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
    corpus = folder / "captions_subset.txt"
    corpus.write_text("\n".join(covariance_cache.read_corpus(covariance_cache.SHIPPED_CORPUS)[:3000]) + "\n")
    original_corpus = covariance_cache.CORPUS
    covariance_cache.CORPUS = str(corpus)              # a slice keeps the test in seconds
    try:
        base = toy.load()
        concept = world.CONCEPTS[0]
        result = benchmark.train_perfusion(pack, base, concept, seed=0, steps=STEPS)
        yield base, concept, result
    finally:
        covariance_cache.CORPUS = original_corpus
        if saved is None:
            folder_paths.folder_names_and_paths.pop("perfusion", None)
        else:
            folder_paths.folder_names_and_paths["perfusion"] = saved


def fidelity(net, model, clip, vae, concept, word):
    images = graph.sample(model, clip, vae, f"a {word}", SAMPLES, seed=5)
    return float(evaluator.read(net, images)["concept"][:, world.ALL_CONCEPTS.index(concept) + 1].mean())


def test_training_lifts_fidelity_and_beta_lowers_it(trained):
    (unet, clip, vae), concept, result = trained
    net = evaluator.load()
    base = fidelity(net, unet, clip, vae, concept, concept.superclass)
    default = fidelity(net, *result.variant((0.7, 1.0)), vae, concept, result.word)
    high_beta = fidelity(net, *result.variant((2.0, 1.0)), vae, concept, result.word)
    assert default > base + LIFT, (base, default)
    assert high_beta < default - DROP, (default, high_beta)
    assert result.losses[-1] < result.losses[0], result.losses[::20]


def test_base_weights_untouched(trained):
    (unet, clip, vae), _, _ = trained
    fresh_unet, _, _ = toy.load()
    for (name, a), b in zip(unet.model.diffusion_model.state_dict().items(), fresh_unet.model.diffusion_model.state_dict().values()):
        assert torch.equal(a, b), name
