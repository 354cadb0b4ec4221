"""The README documents every node input, and points only at files that are in the repository
(core tier: reads the sources, imports nothing of ComfyUI)."""

import ast
import os
import re
import urllib.parse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
WORKFLOWS = sorted(f[:-len(".json")] for f in os.listdir(os.path.join(ROOT, "workflows")) if f.endswith(".json"))


def node_inputs():
    """{class name: [input names]} from every INPUT_TYPES in nodes/*.py (the keys of its "required" and
    "optional" dicts)."""
    found = {}
    folder = os.path.join(ROOT, "nodes")
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(folder, name), encoding="utf-8").read())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "INPUT_TYPES"):
                inputs = []
                for d in (n for n in ast.walk(fn) if isinstance(n, ast.Dict)):
                    for key, value in zip(d.keys, d.values):
                        if isinstance(key, ast.Constant) and key.value in ("required", "optional"):
                            assert isinstance(value, ast.Dict), f"{cls.name}: {key.value} is not a dict literal"
                            inputs += [k.value for k in value.keys if isinstance(k, ast.Constant)]
                found[cls.name] = inputs
    return found


def test_the_sources_were_read():
    inputs = node_inputs()
    assert len(inputs) >= 9 and "gradient_checkpointing" in inputs["PerfusionTrainConcept"]


@pytest.mark.parametrize("node,inputs", sorted(node_inputs().items()))
def test_every_node_input_is_in_the_readme(node, inputs):
    assert f"`{node}`" in README, f"README has no section for {node}"
    # The node's section: from its first mention to the next heading of level 2 or 3.
    start = README.index(f"`{node}`")
    ends = [i for i in (README.find("\n### ", start), README.find("\n## ", start)) if i >= 0]
    section = README[start:min(ends) if ends else len(README)]
    missing = [i for i in inputs if not re.search(rf"`{re.escape(i)}`|`[^`\n]*\b{re.escape(i)}\b[^`\n]*`", section)]
    assert missing == [], f"README does not document {node}'s inputs {missing}"


def test_readme_links_point_into_the_repository():
    links = re.findall(r"\]\(([^)#\s]+)\)", README)
    local = [urllib.parse.unquote(link) for link in links if "://" not in link]
    assert local, "no links found"
    for link in local:
        assert not link.startswith(".."), f"README links outside the repository: {link}"
        assert os.path.exists(os.path.join(ROOT, link)), f"README links to a missing file: {link}"


def test_readme_names_every_template():
    for name in WORKFLOWS:
        assert name in README, f"the README's quick start does not name the template {name!r}"


def test_code_points_at_no_file_outside_the_repository():
    offenders = []
    for folder in ("core", "nodes", "tests", "web", "scripts", "docs", "workflows", "bench"):
        for top, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in names:
                if name.endswith((".py", ".sh", ".js", ".md", ".json", ".txt")) and name != "test_readme.py":
                    text = open(os.path.join(top, name), encoding="utf-8", errors="replace").read()
                    if "comfyui-notes.md" in text or "../shared/" in text:
                        offenders.append(os.path.relpath(os.path.join(top, name), ROOT))
    assert offenders == []
