"""The device check (scripts/device-check.sh, scripts/device_check.py) keeps working on machines without
a GPU: its CPU subset runs and passes, it names every step it skipped and why, its CUDA plan asks every
bench for --device cuda and every test step for PERFUSION_TEST_DEVICE=cuda, and it stops at the first
failing step with the end of its log. Runs everywhere; with COMFYUI_PATH the CPU subset includes the
device-safety host tests."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "device-check.sh")
CUDA_STEPS = ("host", "lowvram", "highvram", "real", "bench-slider", "bench-train", "bench-subject")
LINE = re.compile(r"^device-check: \[(\d+)/(\d+)\] (\S+): (PASS|FAIL|SKIP)\b(.*)$")


def device_check(*args, **env):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=400,
                          env=dict(os.environ, PERFUSION_DEVICE_CHECK_PYTHON=sys.executable, **env))


def driver():
    spec = importlib.util.spec_from_file_location("device_check", os.path.join(ROOT, "scripts", "device_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cpu_subset_runs_and_names_what_it_skipped(tmp_path):
    r = device_check("--cpu", "--log-dir", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    results = {m[3]: (m[4], m[5]) for m in (LINE.match(line) for line in r.stdout.splitlines()) if m}
    assert set(results) >= set(CUDA_STEPS) | {"safety", "bench-edit", "bench-flags"}, r.stdout
    for name in CUDA_STEPS:
        assert results[name] == ("SKIP", " (needs a CUDA device)"), (name, results[name])
    assert results["bench-flags"][0] == "PASS" and "MISSING" not in results["bench-flags"][1]
    assert results["bench-edit"][0] == "PASS" and "per layer" in results["bench-edit"][1]
    comfyui = os.environ.get("COMFYUI_PATH")
    skipped = list(CUDA_STEPS)
    if comfyui and os.path.isfile(os.path.join(comfyui, "comfy", "model_patcher.py")):
        assert results["safety"][0] == "PASS" and "passed" in results["safety"][1], results["safety"]
    else:
        assert results["safety"] == ("SKIP", " (needs COMFYUI_PATH)")
        skipped.insert(0, "safety")
    assert re.search(r"^device-check: done in \d+ s; skipped: " + ", ".join(skipped) + "$", r.stdout, re.M), r.stdout
    assert sorted(os.listdir(tmp_path))                     # each step's full output kept


def test_the_cuda_plan_puts_every_step_on_the_gpu():
    r = device_check("--plan", "--device", "cuda")
    assert r.returncode == 0, r.stderr
    plan = dict(re.findall(r"^device-check: (\S+) \(.*?\): (.*)$", r.stdout, re.M))
    for name in ("safety", "host", "lowvram", "highvram", "real"):
        assert "PERFUSION_TEST_DEVICE=cuda" in plan[name] and "-x" in plan[name].split(), plan[name]
    assert "PERFUSION_TEST_VRAM=lowvram" in plan["lowvram"] and "PERFUSION_TEST_VRAM=highvram" in plan["highvram"]
    for name in ("bench-edit", "bench-slider", "bench-train", "bench-subject"):
        assert "--device cuda" in plan[name], plan[name]
    assert sum(s.seconds for s in driver().steps(sys.executable, True)) > 0


def test_it_stops_at_the_first_failure_with_the_end_of_the_log(tmp_path, monkeypatch, capsys):
    check = driver()
    ok = check.Step("first", [sys.executable, "-c", "print('figures: 1.0 ms')"], 30, check._lines("figures"),
                    cuda_only=False, needs_comfyui=False)
    bad = check.Step("second", [sys.executable, "-c", "raise RuntimeError('the traceback of step two')"], 30,
                     check._lines("never"), cuda_only=False, needs_comfyui=False)
    never = check.Step("third", [sys.executable, "-c", "print('ran')"], 30, check._lines("ran"),
                       cuda_only=False, needs_comfyui=False)
    monkeypatch.setattr(check, "steps", lambda py, cuda: [ok, bad, never])
    assert check.main(["--cpu", "--log-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "[1/3] first: PASS" in out and "figures: 1.0 ms" in out
    assert "[2/3] second: FAIL (exit status 1)" in out and "RuntimeError: the traceback of step two" in out
    assert "third" not in out
    assert "stopped at second" in out


def test_a_step_past_the_budget_is_skipped_and_said(tmp_path, monkeypatch, capsys):
    check = driver()
    slow = check.Step("slow", [sys.executable, "-c", "import time; time.sleep(30)"], 300, check._lines("x"),
                      cuda_only=False, needs_comfyui=False)
    later = check.Step("later", [sys.executable, "-c", "pass"], 30, check._lines("x"), cuda_only=False,
                       needs_comfyui=False)
    monkeypatch.setattr(check, "steps", lambda py, cuda: [slow, later])
    assert check.main(["--cpu", "--budget", "12", "--log-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"\[1/2\] slow: FAIL \(ran past its 12 s limit\)", out), out
    assert check.main(["--cpu", "--budget", "5", "--log-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[1/2] slow: SKIP (time budget spent (5 s))" in out and "[2/2] later: SKIP" in out
