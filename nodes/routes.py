"""HTTP routes for the web extension: GET /perfusion/concepts, GET /perfusion/checkpoint_family?name=,
GET /perfusion/folders."""

from __future__ import annotations

import logging
import os

import folder_paths

from ..core.concept_file import read_metadata
from ..core.errors import ConceptError
from ..core.model_family import family_of_header, read_header
from . import model_folder

log = logging.getLogger("perfusion")


def concept_list() -> list:
    out = []
    for name in model_folder.concept_names():
        path = folder_paths.get_full_path(model_folder.FOLDER, name)
        entry = {"name": name, "size": os.path.getsize(path) if path else None}
        try:
            meta = read_metadata(path)
            entry.update({k.split(".", 1)[1]: v for k, v in meta.items() if k.startswith("perfusion.")})
        except (ConceptError, OSError, ValueError) as e:
            entry["error"] = str(e)
        out.append(entry)
    return out


def checkpoint_family(name: str) -> dict:
    path = folder_paths.get_full_path("checkpoints", name) if name else None
    if path is None or not path.endswith(".safetensors"):
        return {"name": name, "family": None, "context_dim": None}
    try:
        family, context = family_of_header(read_header(path))
    except (OSError, ValueError):
        family, context = None, None
    return {"name": name, "family": family, "context_dim": context}


def model_folders() -> dict:
    """Where each of the pack's file kinds is looked for (the first folder is where the pack writes), and
    how many files each holds: the loaders' empty state names the folder."""
    from . import subject_adapter
    names = {model_folder.FOLDER: model_folder.concept_names()}
    for folder in subject_adapter.FOLDERS:
        names[folder] = [n for n in subject_adapter.adapter_names() if n.startswith(folder + "/")]
    return {folder: {"paths": folder_paths.get_folder_paths(folder), "files": len(found)}
            for folder, found in names.items()}


def register() -> None:
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:          # imported outside a running server (tests): nothing to register
        return

    @server.routes.get("/perfusion/concepts")
    async def concepts(request):
        return web.json_response(concept_list())

    @server.routes.get("/perfusion/checkpoint_family")
    async def family(request):
        return web.json_response(checkpoint_family(request.query.get("name", "")))

    @server.routes.get("/perfusion/folders")
    async def folders(request):
        return web.json_response(model_folders())
