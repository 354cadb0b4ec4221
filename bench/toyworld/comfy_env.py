"""Makes ComfyUI importable in a bench process (COMFYUI_PATH), on the GPU when there is one."""

from __future__ import annotations

import os
import sys


def setup(cpu: bool | None = None):
    path = os.environ.get("COMFYUI_PATH")
    if not path or not os.path.exists(os.path.join(path, "comfy")):
        sys.exit("set COMFYUI_PATH to a ComfyUI folder (docs/testing.md)")
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import torch
    from comfy.cli_args import args
    args.cpu = (not torch.cuda.is_available()) if cpu is None else cpu
