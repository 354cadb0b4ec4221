"""Registers ``models/perfusion`` with folder_paths (extra_model_paths.yaml entries are kept)."""

from __future__ import annotations

import os

import folder_paths

FOLDER = "perfusion"
EXTENSIONS = {".safetensors"}


def register() -> None:
    paths, extensions = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if default not in paths:
        paths = [default] + list(paths)     # the YAML may already have added paths: keep them
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(extensions) | EXTENSIONS)


def concept_names() -> list[str]:
    return folder_paths.get_filename_list(FOLDER)


def concept_path(name: str) -> str:
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        from ..core.errors import ConceptError
        folders = ", ".join(folder_paths.get_folder_paths(FOLDER))
        raise ConceptError(f"concept file '{name}' not found in models/perfusion ({folders})")
    return path
