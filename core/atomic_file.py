"""Writing a safetensors file all-or-nothing: temp file in the same folder, then a link / rename that
never replaces an existing file. A failure (or Cancel) leaves no partial file behind."""

from __future__ import annotations

import os
import tempfile

from safetensors.torch import save_file

from .errors import ConceptError


def save_atomic(tensors: dict, path: str, metadata: dict, what: str = "file", overwrite: bool = False) -> str:
    exists = ConceptError(f"{what} '{os.path.basename(path)}' already exists; choose another name")
    if not overwrite and os.path.exists(path):
        raise exists
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".perfusion-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if a file appeared meanwhile: never overwrite silently
            except FileExistsError:
                raise exists from None
            except OSError:         # file systems without hard links
                if os.path.exists(path):
                    raise exists from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
