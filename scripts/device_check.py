"""The device check (issue 13): one prepared command for the few minutes a GPU machine is at hand.

    COMFYUI_PATH=/path/to/ComfyUI bash scripts/device-check.sh [--cpu] [--plan] [--only a,b] [--budget 470]

On a CUDA machine, in this order, each step under its own time limit and all under one budget
(default 470 s, so the whole check fits 8 minutes on one GPU):

  bench-flags  every bench accepts --device (its --help), so the plan below parses
  safety       tests/test_host_device_safety.py on the GPU: device/dtype follow-through, sync counts
               (torch.cuda.set_sync_debug_mode), fp32/fp16 sampling through offload and partial load
  host         the host suite on the GPU (PERFUSION_TEST_DEVICE=cuda: tiny models on the GPU, the test
               servers without --cpu); the real-checkpoint tier and the browser test are separate / left out
  lowvram      the safety tests again with ComfyUI's --lowvram (in the test process and its servers)
  highvram     ... and with --highvram
  real         tests/test_host_real_checkpoints.py on the GPU: full-size SD1.5 and SD2.1 single-file
               checkpoints (random weights) through CheckpointLoaderSimple in real servers
  bench-edit   bench/edit_overhead.py --device cuda: per-layer edit cost and a full SD1.5 UNet step, 0/1/3 concepts
  bench-slider bench/slider_latency.py --device cuda
  bench-train  bench/train_vs_lora.py --device cuda --resolution 512: step time and peak memory vs TrainLoraNode
  bench-subject bench/subject_overhead.py --device cuda: subject cost per backend

It prints one line per step (PASS / FAIL / SKIP, seconds, the step's figures), writes each step's
full output to a log folder, and stops at the first failure with the end of that log (the
traceback). Without CUDA (or with --cpu) it runs the CPU subset (safety on the CPU, the per-layer
edit bench, bench-flags) and says which steps it skipped and why; tests/test_device_check.py runs it.
--plan prints the steps and commands without running anything.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
BENCHES = ("edit_overhead", "slider_latency", "train_vs_lora", "subject_overhead", "covariance_cost")
PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rs"]


def _pytest_figures(out: str) -> str:
    found = re.findall(r"^=*\s*(\d+ (?:passed|failed|error).*?)\s*=*$", out, re.M)
    return found[-1] if found else (out.strip().splitlines() or [""])[-1]


def _lines(pattern):
    def figures(out: str) -> str:
        hits = [re.sub(r"\s+", " ", line.strip()) for line in out.splitlines() if re.search(pattern, line)]
        return "; ".join(hits) if hits else (out.strip().splitlines() or [""])[-1]
    return figures


class Step:
    def __init__(self, name, command, seconds, figures, cuda_only=True, needs_comfyui=True, env=None, cwd=ROOT,
                 cpu_command=None):
        self.name, self.command, self.seconds, self.figures = name, command, seconds, figures
        self.cuda_only, self.needs_comfyui, self.env, self.cwd = cuda_only, needs_comfyui, env or {}, cwd
        self.cpu_command = cpu_command


def steps(py: str, cuda: bool) -> list[Step]:
    device = "cuda" if cuda else "cpu"
    on_device = {"PERFUSION_TEST_DEVICE": device}
    bench = lambda name, *a: [py, os.path.join(ROOT, "bench", f"{name}.py"), *a]  # noqa: E731
    flags = [py, "-c", "import subprocess, sys\n"
             f"missing = []\nfor b in {BENCHES!r}:\n"
             f"    out = subprocess.run([sys.executable, {os.path.join(ROOT, 'bench')!r} + '/' + b + '.py', '--help'],"
             " capture_output=True, text=True)\n"
             "    ok = out.returncode == 0 and '--device' in out.stdout\n"
             "    print(b + ': --device ' + ('yes' if ok else 'MISSING'))\n"
             "    missing += [] if ok else [b]\n"
             "sys.exit(1 if missing else 0)\n"]
    return [
        Step("bench-flags", flags, 60, lambda out: ", ".join(re.findall(r"^(\S+): --device (\S+)", out, re.M) and
                                                          [f"{b} {v}" for b, v in re.findall(r"^(\S+): --device (\S+)", out, re.M)]),
             cuda_only=False, needs_comfyui=False),
        Step("safety", [py, *PYTEST, "test_host_device_safety.py"], 150, _pytest_figures, cuda_only=False,
             env=on_device, cwd=TESTS),
        Step("host", [py, *PYTEST, "--ignore=test_host_real_checkpoints.py", "--ignore=test_host_browser.py",
                      "--ignore=test_host_device_safety.py"], 200, _pytest_figures,
             env=on_device, cwd=TESTS),
        Step("lowvram", [py, *PYTEST, "test_host_device_safety.py"], 60, _pytest_figures,
             env={**on_device, "PERFUSION_TEST_VRAM": "lowvram"}, cwd=TESTS),
        Step("highvram", [py, *PYTEST, "test_host_device_safety.py"], 60, _pytest_figures,
             env={**on_device, "PERFUSION_TEST_VRAM": "highvram"}, cwd=TESTS),
        Step("real", [py, *PYTEST, "-s", "test_host_real_checkpoints.py"], 300,
             lambda out: _pytest_figures(out) + " | " + "; ".join(
                 re.findall(r"\[real checkpoints\] (.*)", out)[-4:]),
             env=on_device, cwd=TESTS),
        Step("bench-edit", bench("edit_overhead", "--device", "cuda", "--rounds", "10", "--unet-rounds", "5"), 90,
             _lines(r"% vs|per layer:"), cpu_command=bench("edit_overhead", "--device", "cpu", "--rounds", "3"),
             cuda_only=False, needs_comfyui=False),
        Step("bench-slider", bench("slider_latency", "--device", "cuda", "--rounds", "3"), 90,
             _lines(r"slider change|one sampling step")),
        Step("bench-train", bench("train_vs_lora", "--device", "cuda", "--resolution", "512", "--batch", "1",
                                  "--steps", "2", "6"), 240, _lines(r"s/step")),
        Step("bench-subject", bench("subject_overhead", "--device", "cuda", "--rounds", "3", "--warmup", "1",
                                    "--layer-rounds", "3", "--encode-runs", "2"), 180,
             _lines(r"1 subject .*target|= .*% of a UNet|encode")),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the CPU subset even where CUDA is available")
    parser.add_argument("--plan", action="store_true", help="print the steps and their commands, run nothing")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="with --plan: the plan for this device (auto: what torch sees)")
    parser.add_argument("--only", default="", help="comma-separated step names")
    parser.add_argument("--budget", type=float, default=float(os.environ.get("PERFUSION_DEVICE_CHECK_BUDGET", 470)),
                        help="seconds for all steps together (default 470)")
    parser.add_argument("--log-dir", default=os.environ.get("PERFUSION_DEVICE_CHECK_LOGS"))
    args = parser.parse_args(argv)
    py = sys.executable
    if args.device != "auto":
        cuda = args.device == "cuda"
    elif args.cpu:
        cuda = False
    else:
        try:
            import torch
            cuda = torch.cuda.is_available()
        except ImportError:
            cuda = False
    comfyui = os.environ.get("COMFYUI_PATH", "")
    has_comfyui = bool(comfyui) and os.path.isfile(os.path.join(comfyui, "comfy", "model_patcher.py"))
    plan = steps(py, cuda)
    only = [s for s in args.only.split(",") if s]
    unknown = [s for s in only if s not in {p.name for p in plan}]
    if unknown:
        parser.error(f"unknown step {unknown[0]!r}; steps: {', '.join(p.name for p in plan)}")
    say = lambda line: print(f"device-check: {line}", flush=True)  # noqa: E731
    if args.plan:
        for s in plan:
            command = s.command if cuda or s.cpu_command is None else s.cpu_command
            where = "cuda only" if s.cuda_only else "cuda and cpu"
            env = " ".join(f"{k}={v}" for k, v in s.env.items())
            shown = " ".join(command) if "-c" not in command else f"{py} -c <each bench's --help names --device>"
            say(f"{s.name} ({where}, {s.seconds} s): {env + ' ' if env else ''}{shown}")
        return 0
    logs = args.log_dir or tempfile.mkdtemp(prefix="perfusion-device-check-")
    os.makedirs(logs, exist_ok=True)
    started = time.monotonic()
    say(f"{'CUDA' if cuda else 'CPU subset (no CUDA device' + (', --cpu' if args.cpu else '') + ')'}; "
        f"ComfyUI {comfyui if has_comfyui else '(COMFYUI_PATH not set: host steps skip)'}; "
        f"budget {args.budget:.0f} s; logs in {logs}")
    skipped, failed = [], None
    for k, s in enumerate(plan, 1):
        tag = f"[{k}/{len(plan)}] {s.name}"
        if only and s.name not in only:
            continue
        reason = None
        if s.cuda_only and not cuda:
            reason = "needs a CUDA device"
        elif s.needs_comfyui and not has_comfyui:
            reason = "needs COMFYUI_PATH"
        left = args.budget - (time.monotonic() - started)
        if reason is None and left < 10:
            reason = f"time budget spent ({args.budget:.0f} s)"
        if reason:
            skipped.append(s.name)
            say(f"{tag}: SKIP ({reason})")
            continue
        command = s.command if cuda or s.cpu_command is None else s.cpu_command
        env = dict(os.environ, **s.env)
        if not s.needs_comfyui and s.name == "bench-edit" and not cuda:
            env.pop("COMFYUI_PATH", None)          # on the CPU: the per-layer part only (seconds, not minutes)
        limit = min(s.seconds, left)
        log_path = os.path.join(logs, f"{k:02d}-{s.name}.log")
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            try:
                rc = subprocess.run(command, cwd=s.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    timeout=limit).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        seconds = time.monotonic() - t0
        with open(log_path) as f:
            out = f.read()
        figures = s.figures(out)
        if rc == 0:
            say(f"{tag}: PASS in {seconds:.0f} s: {figures}")
            continue
        why = f"ran past its {limit:.0f} s limit" if rc == "timeout" else f"exit status {rc}"
        say(f"{tag}: FAIL ({why}) in {seconds:.0f} s: {figures}")
        tail = "\n".join(out.splitlines()[-80:])
        print(f"---- last lines of {log_path} ----\n{tail}\n---- end ----", flush=True)
        failed = s.name
        break
    total = time.monotonic() - started
    if failed:
        say(f"stopped at {failed} after {total:.0f} s; steps after it not run")
        return 1
    say(f"done in {total:.0f} s" + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
