"""The toy world (bench/toyworld/world.py) and its evaluator, without ComfyUI: deterministic scenes,
captions over the world's words only, reference images as specified, and the committed evaluator
reading clean renders."""

import os
import sys

import numpy
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
from toyworld import world  # noqa: E402

WORDS = set(world.COLOUR_NAMES + world.SHAPES + world.SIZES) | {"a", "on", "background", "and", "small"}
for phrase in list(world.POSITION_WORDS.values()) + list(world.PREFIXES):
    WORDS.update(phrase.split())


def test_batches_are_deterministic_for_a_seed():
    a = world.batch(numpy.random.default_rng([3, 1]), 16)
    b = world.batch(numpy.random.default_rng([3, 1]), 16)
    c = world.batch(numpy.random.default_rng([4, 1]), 16)
    assert numpy.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not numpy.array_equal(a[0], c[0])
    assert a[0].shape == (16, 64, 64, 3) and a[0].dtype == numpy.float32
    assert 0.0 <= a[0].min() and a[0].max() <= 1.0


def test_captions_use_only_world_words_and_never_name_a_pattern():
    rng = numpy.random.default_rng(0)
    texts = [world.training_pair(rng)[1] for _ in range(500)]
    used = {w for t in texts for w in t.split()}
    assert used <= WORDS, used - WORDS
    assert not used & {"striped", "split", "bullseye", "dot", "dotted", "sks"}
    assert 20 < sum(t == "" for t in texts) < 80          # ~10% empty captions, for classifier-free guidance


def test_pretraining_scenes_hold_no_concept():
    rng = numpy.random.default_rng(1)
    for _ in range(300):
        scene, _ = world.random_scene(rng)
        assert scene.main.concept is None and (scene.second is None or scene.second.concept is None)


@pytest.mark.parametrize("concept", world.ALL_CONCEPTS, ids=lambda c: c.name)
def test_references_sit_on_the_concepts_two_backgrounds(concept):
    refs = world.references(concept)
    assert refs.shape == (5, 64, 64, 3)
    corners = refs[:, 1, 1] * 255
    for k, corner in enumerate(corners):
        expected = numpy.array(world.COLOURS[concept.backgrounds[0 if k < 3 else 1]])
        assert numpy.abs(corner - expected).max() < 30, (k, corner, expected)
    assert numpy.array_equal(refs, world.references(concept))


def test_labels_name_the_scene():
    rng = numpy.random.default_rng(2)
    concept = world.CONCEPTS[1]
    scene, position = world.random_scene(rng, concept, background="green", position="left", second=("red", "circle"))
    labels = scene.labels()
    assert labels["concept"] == world.ALL_CONCEPTS.index(concept) + 1 and labels["colour"] == -1
    assert labels["background"] == world.COLOUR_NAMES.index("green")
    assert labels["position"] == world.POSITIONS.index("left") and labels["size"] == world.SIZES.index("large")
    assert labels["second"] == 1 and labels["second_colour"] == world.COLOUR_NAMES.index("red")
    assert world.distractor(rng) not in world.ALL_CONCEPTS


def test_the_committed_evaluator_reads_clean_renders():
    torch = pytest.importorskip("torch")
    from toyworld import evaluator
    if not os.path.exists(evaluator.WEIGHTS):
        pytest.fail(f"{evaluator.WEIGHTS} is missing: run `python -m toyworld.evaluator` in bench/")
    net = evaluator.load()
    accuracy = evaluator.accuracy_on_renders(net, seed=5, count=200, degraded=False)
    for head in ("background", "colour", "size", "concept", "second"):
        assert accuracy[head] > 0.95, (head, accuracy)
    images = torch.from_numpy(world.references(world.CONCEPTS[0]))
    read = evaluator.read(net, images)
    assert read["concept"].shape == (5, len(world.ALL_CONCEPTS) + 1)
    assert (read["concept"].argmax(1) == 1).all()


def test_fine_tuning_on_generated_negatives_teaches_the_concept_heads_no_concept_and_keeps_the_rest():
    torch = pytest.importorskip("torch")
    from toyworld import evaluator, generated
    torch.manual_seed(0)
    net = evaluator.load()
    # stand-ins for base-model samples: a striped-circle render made yellow-ish and blurred, which the
    # render-trained head may call the concept; the fine-tuning must learn "no concept" for them
    refs = torch.from_numpy(world.references(world.CONCEPTS[0])).float()
    fakes = (refs * torch.tensor([1.0, 0.9, 0.2]) + torch.tensor([0.0, 0.1, 0.0])).clamp(0, 1)
    fakes = torch.cat([fakes] * 8)
    before = evaluator.read(net, fakes)["concept"][:, 0].mean()
    tuned = generated.finetune(net, fakes, round_trip=lambda x: x, steps=30, batch=32, lr=1e-3, log=lambda *_: None)
    after = evaluator.read(tuned, fakes)
    assert after["concept"][:, 0].mean() > max(0.9, float(before)), (before, after["concept"][:, 0].mean())
    assert (after["second_concept"].argmax(1) == 0).all()
    accuracy = evaluator.accuracy_on_renders(tuned, seed=5, count=200, degraded=False)
    assert accuracy["concept"] > 0.9 and accuracy["colour"] > 0.9, accuracy
    assert (evaluator.read(tuned, refs)["concept"].argmax(1) == 1).all()


def _score(fidelity, edit):
    per_prompt = {"alone": {"fidelity": fidelity, "leak": 0.5}}
    for name in ("background", "small", "second", "left"):
        per_prompt[name] = {"fidelity": fidelity / 2, "edit": edit, **({} if name == "background" else {"leak": 0.5})}
    per_prompt["plain"] = {"fidelity": fidelity / 3}
    from toyworld import benchmark
    return benchmark.summarise(per_prompt)


def test_edit_prompts_follow_the_captions_and_the_bare_prompt_scores_fidelity_only():
    from toyworld import benchmark
    prompts = {name: (prompt, expected) for name, prompt, expected in benchmark.prompt_set(world.CONCEPTS[0], "sks")}
    assert all(p.startswith("a photo of a ") for n, (p, _) in prompts.items() if n != "plain")
    assert prompts["plain"] == ("a sks", {})
    # a position is named only beside a second object, as in every pretraining caption that names one
    assert " and a small " in prompts["left"][0]
    s = benchmark.summarise({**{n: {"fidelity": 0.2, "edit": 0.5, "leak": 0.1} for n in ("background", "small", "second", "left")},
                             "alone": {"fidelity": 0.6, "leak": 0.1}, "plain": {"fidelity": 0.9}})
    assert (s["fidelity_alone"], s["fidelity_plain"], s["fidelity_edits"]) == (0.6, 0.9, 0.2)


def test_the_quality_gate_asks_one_object_prompts_and_names_positions_as_the_captions_do():
    from toyworld import quality_gate
    sets = {}
    for group, prompt, expected in quality_gate.prompts():
        sets.setdefault(group, []).append((prompt, expected))
    assert {g: len(v) for g, v in sets.items()} == {"named": 48, "outside": 8, "two objects": 8, "positioned": 8}
    assert all(" and " not in p and set(quality_gate.GATE) <= set(e) for p, e in sets["named"])
    position_words = [w for w in world.POSITION_WORDS.values()]
    for group, rows in sets.items():
        for prompt, _ in rows:
            if any(w in prompt for w in position_words):
                assert (" and a small " in prompt) == (group != "outside"), prompt


def test_benchmark_units_cover_every_run_in_report_order():
    from toyworld import benchmark
    units = benchmark.run_units(world.CONCEPTS[:2], [0, 1], pairs=True)
    assert units == [("base", "striped-circle", 0), ("run", "striped-circle", 0), ("run", "striped-circle", 1),
                     ("base", "split-square", 0), ("run", "split-square", 0), ("run", "split-square", 1),
                     ("pair", "", 0), ("pair", "", 1)]
    assert benchmark.unit_weight(units[1]) > benchmark.unit_weight(units[6]) > benchmark.unit_weight(units[0])


def test_lora_tuning_picks_the_best_trade_and_its_units_parse():
    from toyworld import benchmark
    tuning = {"0.0003": {"fidelity_alone": 0.2, "editability": 0.9}, "0.003": {"fidelity_alone": 0.7, "editability": 0.5},
              "0.01": {"fidelity_alone": 0.8, "editability": 0.2}}
    assert benchmark.best_lora_rate(tuning) == 0.003
    unit = ("tune", repr(1e-2), 0)
    assert benchmark._unit_name(unit) == "tune-0.01-0" and float(":".join(map(str, unit)).split(":")[1]) == 1e-2
    assert benchmark.unit_weight(unit) > benchmark.unit_weight(("base", "split-square", 0))


def test_the_benchmark_refuses_a_jobs_count_below_one(capsys):
    from toyworld import benchmark
    with pytest.raises(SystemExit):
        benchmark.main(["--jobs", "0"])
    assert "--jobs: expected 1 or more worker processes, got 0" in capsys.readouterr().err


def test_a_benchmark_part_round_trips_its_sample_rows(tmp_path):
    from toyworld import benchmark
    images = numpy.random.default_rng(0).random((3, 64, 64, 3)).astype(numpy.float32)
    part = {"baseline": {"split-square": _score(0.1, 0.9)}}
    benchmark._save_part(part, [(images, "a square")], str(tmp_path / "base-split-square-0"))
    loaded, rows = benchmark._load_part(str(tmp_path / "base-split-square-0"))
    assert loaded == part
    assert rows[0][1] == "a square" and numpy.abs(rows[0][0] - images).max() <= 1 / 255 + 1e-6


def test_a_rerun_benchmark_keeps_finished_units_of_the_same_model_and_settings(tmp_path):
    from toyworld import benchmark
    files = [tmp_path / "model.safetensors", tmp_path / "evaluator.safetensors"]
    for f in files:
        f.write_bytes(b"weights")
    args = benchmark.argparse.Namespace(samples=0, quick=False, jobs=2)
    folder = benchmark.parts_folder(args, 3e-3, files)
    assert folder == benchmark.parts_folder(args, 3e-3, files)
    others = [benchmark.parts_folder(args, 1e-3, files),
              benchmark.parts_folder(benchmark.argparse.Namespace(samples=16, quick=False, jobs=2), 3e-3, files),
              benchmark.parts_folder(benchmark.argparse.Namespace(samples=0, quick=False, jobs=1), 3e-3, files)]
    others.append(benchmark.parts_folder(args, 3e-3, files, ("2.14.1", "0.3.65")))
    files[0].write_bytes(b"other weights")
    others.append(benchmark.parts_folder(args, 3e-3, files))
    assert len({folder, *others}) == 6
    code = benchmark.code_files()          # a changed trainer or gate must not reuse old parts
    assert any(p.endswith(os.path.join("nodes", "train_concept.py")) for p in code)
    assert any(p.endswith(os.path.join("core", "gated_edit.py")) for p in code)
    assert any(p.endswith(os.path.join("toyworld", "benchmark.py")) for p in code)
    units = benchmark.run_units(world.CONCEPTS[:1], [0, 1], pairs=False)
    benchmark._save_part({"baseline": {}}, [], str(tmp_path / benchmark._unit_name(units[0])))
    (tmp_path / (benchmark._unit_name(units[1]) + ".npz")).write_bytes(b"")      # died before its .json
    assert benchmark.pending(units, str(tmp_path)) == units[1:]


def _results(seeds, base_fidelity=0.02):
    """A results.json of one perfusion and one lora8 run per seed (split-square), and pairs."""
    runs = []
    for seed in seeds:
        runs.append({"method": "perfusion", "concept": "split-square", "seed": seed, "seconds": 30, "peak_bytes": 2**20,
                     "file_bytes": 7000, "settings": [{"setting": [b, 1.0], **_score(0.8 - b / 4, 0.3 + b / 4)}
                                                      for b in (0.0, 0.7, 2.0)]})
        runs.append({"method": "lora8", "concept": "split-square", "seed": seed, "seconds": 40, "peak_bytes": 2**21,
                     "file_bytes": 3 * 2**20, "settings": [{"setting": s, **_score(s * 0.7, 0.6)} for s in (0.5, 1.0)]})
    pair = {"prompt": "p", "fidelity_main": 0.5, "fidelity_second": 0.2, "second_present": 0.9, "edit": 0.7}
    return {"config": {"steps": 200, "batch": 8, "samples": 32, "seeds": list(seeds), "lora_rate": 3e-4,
                       "concepts": ["split-square"], "sampler": {}, "tau": 0.15, "torch": "x", "quick": False},
            "baseline": {"split-square": _score(base_fidelity, 0.6)}, "runs": runs,
            "pairs": [{"method": m, "seed": s, "pair": pair, "pair_background": pair}
                      for m in ("perfusion", "lora8") for s in seeds]}


def test_the_report_has_every_method_the_pairs_and_the_plot(tmp_path):
    pytest.importorskip("PIL")
    from toyworld import report
    results = _results((0, 1))
    agg = report.write(results, str(tmp_path))
    text = (tmp_path / "report.md").read_text()
    assert "| Perfusion | 0.62 ± 0.00" in text and "| LoRA rank 8 | 0.70 ± 0.00" in text
    assert "## Two concepts in one prompt" in text and "0.50 ± 0.00" in text
    assert agg["perfusion"]["[2.0, 1.0]"]["editability"][0] == pytest.approx(0.8)
    assert (tmp_path / "fidelity_editability.png").stat().st_size > 1000


def test_runs_over_disjoint_seeds_merge_into_one_benchmark_and_mismatched_runs_are_refused():
    from toyworld import report
    merged = report.merge(_results((0, 1)), _results((2,)))
    assert merged["config"]["seeds"] == [0, 1, 2]
    assert [(r["method"], r["seed"]) for r in merged["runs"]] == [
        ("perfusion", 0), ("lora8", 0), ("perfusion", 1), ("lora8", 1), ("perfusion", 2), ("lora8", 2)]
    assert sorted(p["seed"] for p in merged["pairs"]) == [0, 0, 1, 1, 2, 2]
    assert report.aggregate(merged)["perfusion"]["[0.0, 1.0]"]["runs"] == 3
    with pytest.raises(ValueError, match="seeds \\[1\\]"):
        report.merge(_results((0, 1)), _results((1,)))
    other = _results((2,))
    other["config"]["samples"] = 16
    with pytest.raises(ValueError, match="samples \\(32 vs 16\\)"):
        report.merge(_results((0, 1)), other)
    with pytest.raises(ValueError, match="base model scores split-square differently"):
        report.merge(_results((0, 1)), _results((2,), base_fidelity=0.03))


def test_the_report_command_names_a_folder_without_results_and_writes_nothing(tmp_path):
    from toyworld import report
    with pytest.raises(SystemExit, match="no results.json there"):
        report.main([str(tmp_path), "--merge", str(tmp_path / "missing")])
    assert list(tmp_path.iterdir()) == []
