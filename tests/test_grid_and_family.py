"""core/grid.py (the sweep's labelled grid) and core/model_family.py (a checkpoint's family from its header)."""

import pytest
import torch
from safetensors.torch import save_file

from core.errors import ConceptError
from core.grid import labelled_grid, parse_values
from core.model_family import family_of_header, read_header


def test_grid_places_every_cell_and_adds_labels():
    cells = [[torch.full((16, 24, 3), (r * 3 + c) / 10) for c in range(3)] for r in range(2)]
    grid = labelled_grid(cells, ["strength 0.5", "strength 1"], ["beta 0.4", "beta 0.6", "beta 0.8"], "title")
    assert grid.shape[0] == 1 and grid.shape[-1] == 3
    height, width = grid.shape[1], grid.shape[2]
    assert height > 2 * 16 and width > 3 * 24                       # room for the labels
    for r in range(2):
        for c in range(3):
            cell = grid[0, height - (2 - r) * 16:height - (1 - r) * 16, width - (3 - c) * 24:width - (2 - c) * 24]
            assert torch.allclose(cell, torch.full_like(cell, (r * 3 + c) / 10), atol=1 / 255)
    top = grid[0, : height - 2 * 16]
    assert (top > 0.5).any()                                         # label text was drawn


@pytest.mark.parametrize("text,values", [("0.4, 0.5 0.6", [0.4, 0.5, 0.6]), ("1", [1.0])])
def test_parse_values(text, values):
    assert parse_values(text, "betas", 0.0, 1.0) == values


@pytest.mark.parametrize("text,message", [("", "expected a list"), ("0.4, x", "'x' is not a number"),
                                          ("1.5", "1.5 is out of range"), (" ".join(["0.5"] * 13), "at most 12")])
def test_parse_values_refuses(text, message):
    with pytest.raises(ConceptError, match=message):
        parse_values(text, "betas", 0.0, 1.0)


@pytest.mark.parametrize("key,shape,family", [
    ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", (320, 768), ("sd1", 768)),
    ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", (320, 1024), ("sd2", 1024)),
    ("model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", (640, 2048), ("sdxl", 2048)),
    ("model.diffusion_model.out.2.weight", (4, 320), (None, None)),
])
def test_family_from_a_checkpoint_header(tmp_path, key, shape, family):
    path = tmp_path / "checkpoint.safetensors"
    save_file({key: torch.zeros(shape, dtype=torch.float16)}, str(path))
    assert family_of_header(read_header(str(path))) == family
