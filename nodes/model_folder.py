"""Registers ``models/perfusion`` with folder_paths (extra_model_paths.yaml entries are kept).

ComfyUI reads extra_model_paths.yaml before it imports custom nodes, so a YAML ``perfusion:`` entry
may already be registered here; it keeps its place in front (an ``is_default: true`` entry first),
and files the pack writes go to the first folder listed.
"""

from __future__ import annotations

import logging
import os

import folder_paths

from ..core.errors import ConceptError

FOLDER = "perfusion"
SUBJECT_FOLDER = "subject_ref"                      # the pack's own subject adapters (nodes/subject_adapter.py)
EXTENSIONS = {".safetensors"}
COVARIANCE_SUBFOLDER = "covariance"


def register_folder(folder: str, extensions: set) -> None:
    """models/<folder> after any folders extra_model_paths.yaml already gave it."""
    paths, known = folder_paths.folder_names_and_paths.get(folder, ([], set()))
    default = os.path.join(folder_paths.models_dir, folder)
    if default not in paths:
        paths = list(paths) + [default]
    folder_paths.folder_names_and_paths[folder] = (paths, set(known) | extensions)


def _server_running() -> bool:
    try:
        from server import PromptServer
    except ImportError:
        return False
    return getattr(PromptServer, "instance", None) is not None


def register() -> None:
    """Registers the folders; in a running ComfyUI also creates the first folder of each (empty), the
    one folder_paths lists first, which is where the pack writes."""
    register_folder(FOLDER, EXTENSIONS)
    register_folder(SUBJECT_FOLDER, set())          # its extensions: subject_adapter.register()
    if not _server_running():                       # imported by tests or scripts: create nothing
        return
    for folder in (FOLDER, SUBJECT_FOLDER):         # so a newcomer finds where files go
        first = folder_paths.get_folder_paths(folder)[0]
        try:
            os.makedirs(first, exist_ok=True)
        except OSError as e:
            logging.getLogger("perfusion").warning("Perfusion: could not create %s (%s)", first, e)


def concept_names() -> list[str]:
    """Concept files (the covariance cache lives in a subfolder and is not a concept)."""
    return [n for n in folder_paths.get_filename_list(FOLDER)
            if not n.replace("\\", "/").startswith(COVARIANCE_SUBFOLDER + "/")]


def concept_path(name: str) -> str:
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(FOLDER))
        raise ConceptError(f"concept file '{name}' not found in models/perfusion ({folders})")
    return path


def output_folder() -> str:
    """Where the pack writes: the first folder folder_paths lists for perfusion."""
    return folder_paths.get_folder_paths(FOLDER)[0]
