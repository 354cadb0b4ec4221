"""Concept file format v1: round trip, sizes, and every bad file refused with a clear message."""

import os
import pickle
import struct
import zipfile
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from concept_factory import FAMILY_TOWER_WIDTHS, SD15_LAYERS, SDXL_LAYERS, make_concept
from core.concept_file import (Concept, concept_metadata, concept_tensors, read_concept, read_metadata,
                               write_concept)
from core.errors import ConceptError


def sd15(**kw):
    return make_concept(Concept, SD15_LAYERS, FAMILY_TOWER_WIDTHS["sd1"], **kw)


def assert_same(a, b, atol):
    assert (a.trigger, a.superclass, a.model, a.context_dim, a.beta, a.tau, a.covariance_sha256) == \
           (b.trigger, b.superclass, b.model, b.context_dim, b.beta, b.tau, b.covariance_sha256)
    assert a.info == b.info
    for key in ("i_star", "G_i_star", "superclass_encoding"):
        assert torch.allclose(getattr(a, key), getattr(b, key), atol=atol, rtol=atol)
    assert a.embeddings.keys() == b.embeddings.keys() and a.v_targets.keys() == b.v_targets.keys()
    for k in a.embeddings:
        assert torch.allclose(a.embeddings[k], b.embeddings[k], atol=atol, rtol=atol)
    for k in a.v_targets:
        assert torch.allclose(a.v_targets[k], b.v_targets[k], atol=atol, rtol=atol)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 0), (torch.float16, 2e-3)])
def test_round_trip(tmp_path, dtype, atol):
    concept = sd15()
    path = write_concept(str(tmp_path / "sks.safetensors"), concept, dtype=dtype)
    back = read_concept(path)
    assert_same(concept, back, atol)
    assert back.i_star.dtype == torch.float32 and back.name == "sks.safetensors"
    meta = read_metadata(path)
    assert meta["perfusion.format"] == "1" and meta["perfusion.trigger"] == "sks"
    assert meta["perfusion.steps"] == "400"


@pytest.mark.parametrize("family,layers,limit", [("sd1", SD15_LAYERS, 40_000), ("sdxl", SDXL_LAYERS, 200_000)])
def test_file_size_limits(tmp_path, family, layers, limit):
    concept = make_concept(Concept, layers, FAMILY_TOWER_WIDTHS[family], model=family)
    path = write_concept(str(tmp_path / "c.safetensors"), concept)
    size = os.path.getsize(path)
    assert size <= limit, size
    assert len(read_concept(path).v_targets) == (16 if family == "sd1" else 70)


def test_existing_file_is_not_overwritten(tmp_path):
    path = str(tmp_path / "sks.safetensors")
    write_concept(path, sd15())
    before = open(path, "rb").read()
    with pytest.raises(ConceptError, match="already exists"):
        write_concept(path, sd15(seed=5))
    assert open(path, "rb").read() == before
    write_concept(path, sd15(seed=5), overwrite=True)
    assert open(path, "rb").read() != before


def test_invalid_concept_writes_nothing(tmp_path):
    with pytest.raises(ConceptError, match="NaN"):
        write_concept(str(tmp_path / "x.safetensors"),
                      sd15(i_star=torch.full((768,), float("nan"))))
    assert os.listdir(tmp_path) == []


def write_raw(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)
    return str(path)


def good_parts():
    c = sd15()
    return concept_tensors(c, torch.float32), concept_metadata(c)


def variant(tmp_path, tensors=None, metadata=None, drop=(), drop_meta=()):
    t, m = good_parts()
    t.update(tensors or {})
    m.update(metadata or {})
    for k in drop:
        t.pop(k)
    for k in drop_meta:
        m.pop(k)
    return write_raw(tmp_path / "bad.safetensors", t, m)


BAD_FILES = {
    "format missing": (dict(drop_meta=["perfusion.format"]), "no 'perfusion.format'"),
    "format 2": (dict(metadata={"perfusion.format": "2"}), "format '2'"),
    "metadata missing": (dict(drop_meta=["perfusion.superclass"]), "misses the metadata perfusion.superclass"),
    "nan": (dict(tensors={"i_star": torch.full((768,), float("nan"))}), "'i_star' contains NaN or Inf"),
    "inf": (dict(tensors={"v_target." + SD15_LAYERS[0][0]: torch.full((320,), float("inf"))}), "NaN or Inf"),
    "wrong width": (dict(tensors={"G_i_star": torch.ones(1024)}), "G_i_star has 1024 values; expected context_dim = 768"),
    "matrix": (dict(tensors={"superclass_encoding": torch.ones(2, 768)}), "shape \\(2, 768\\)"),
    "missing tensor": (dict(drop=["G_i_star"]), "misses the tensors G_i_star"),
    "unknown tensor": (dict(tensors={"C_inv": torch.ones(3)}), "unexpected tensors C_inv"),
    "float64": (dict(tensors={"i_star": torch.ones(768, dtype=torch.float64)}), "float64; expected float16 or float32"),
    "bfloat16": (dict(tensors={"i_star": torch.ones(768, dtype=torch.bfloat16)}), "bfloat16"),
    "spaces in trigger": (dict(metadata={"perfusion.trigger": "my dog"}), "one word without spaces"),
    "empty trigger": (dict(metadata={"perfusion.trigger": ""}), "trigger is empty"),
    "tau zero": (dict(metadata={"perfusion.tau": "0"}), "perfusion.tau is 0.0; expected a number from 0.01 to 1.0"),
    "beta range": (dict(metadata={"perfusion.beta": "2.5"}), "perfusion.beta is 2.5; expected a number from 0.0 to 2.0"),
    "beta text": (dict(metadata={"perfusion.beta": "high"}), "perfusion.beta is 'high'; expected a number"),
    "context text": (dict(metadata={"perfusion.context_dim": "7x"}), "expected an integer"),
    "unknown family": (dict(metadata={"perfusion.model": "flux"}), "expected one of sd1, sd2, sdxl"),
    "family towers": (dict(metadata={"perfusion.model": "sdxl"}), "sdxl concept needs the tensors embedding.clip_l, embedding.clip_g"),
    "widths": (dict(metadata={"perfusion.context_dim": "1024"}), "do not add up"),
    "energy": (dict(tensors={"G_i_star": -torch.ones(768), "i_star": torch.ones(768)}), "expected a positive number"),
    "no layers": (dict(drop=[f"v_target.{p}" for p, _ in SD15_LAYERS]), "no v_target"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_refused_with_its_name(tmp_path, case):
    kwargs, message = BAD_FILES[case]
    path = variant(tmp_path, **kwargs)
    with pytest.raises(ConceptError, match=message) as info:
        read_concept(path)
    assert "bad.safetensors" in str(info.value)


def test_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "was_unpickled"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"x": Boom()}, protocol=2))
    with pytest.raises(ConceptError, match="pickle"):
        read_concept(str(path))
    assert not marker.exists()


def test_torch_zip_checkpoint_is_refused(tmp_path):
    path = tmp_path / "concept.safetensors"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(ConceptError, match="pickle / PyTorch file"):
        read_concept(str(path))


@pytest.mark.parametrize("content,message", [
    (b"", "too short"),
    (struct.pack("<Q", 10 ** 9) + b"{}", "header is damaged"),
    (struct.pack("<Q", 8) + b"not json", "header is damaged"),
    (struct.pack("<Q", 8) + b"{bad json", "not a readable safetensors file"),
])
def test_damaged_file_is_refused(tmp_path, content, message):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(ConceptError, match=message):
        read_concept(str(path))


@pytest.mark.parametrize("pad", [0x80 - 2, 0x4B50 - 2])
def test_header_lengths_that_look_like_pickle_or_zip_magic_still_load(tmp_path, pad):
    """The first bytes are the header length: 0x..80 and 0x4B50 ("PK") are ordinary lengths."""
    import json
    tensors, meta = good_parts()
    path = write_raw(tmp_path / "ok.safetensors", tensors, meta)
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    target = (n // 0x100 + 1) * 0x100 + 0x80 if pad == 0x80 - 2 else 0x4B50
    header["__metadata__"]["perfusion.padding"] = ""
    body = json.dumps(header, separators=(",", ":")).encode()
    header["__metadata__"]["perfusion.padding"] = "x" * (target - len(body))
    body = json.dumps(header, separators=(",", ":")).encode()
    assert len(body) == target
    fixed = tmp_path / "magic.safetensors"
    fixed.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:])
    assert fixed.read_bytes()[:1] == b"\x80" or fixed.read_bytes()[:2] == b"PK"
    assert read_concept(str(fixed)).trigger == "sks"


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConceptError, match="not found"):
        read_concept(str(tmp_path / "nope.safetensors"))
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    with pytest.raises(ConceptError, match="dir.safetensors"):
        read_concept(str(folder))


def test_concept_is_immutable():
    c = sd15()
    with pytest.raises(Exception):
        c.trigger = "x"
    assert replace(c, trigger="x").trigger == "x" and c.trigger == "sks"


def test_values_too_large_for_float16_are_refused_before_writing(tmp_path):
    concept = sd15()
    path = SD15_LAYERS[0][0]
    big = dict(concept.v_targets, **{path: torch.full((320,), 1e6)})
    with pytest.raises(ConceptError, match=f"v_target.{path} has values too large for float16"):
        write_concept(str(tmp_path / "big.safetensors"), replace(concept, v_targets=big))
    assert os.listdir(tmp_path) == []
    write_concept(str(tmp_path / "big.safetensors"), replace(concept, v_targets=big), dtype=torch.float32)
    assert read_concept(str(tmp_path / "big.safetensors")).v_targets[path][0] == 1e6
