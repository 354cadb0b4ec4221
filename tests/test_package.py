"""The Comfy Registry archive and pyproject.toml (core tier: no ComfyUI, no comfy-cli needed).

scripts/check-package.py reproduces how comfy-cli's `comfy node pack` / `publish` choose the files
(comfy_cli/file_utils.py, zip_files: `git ls-files` minus .comfyignore, plus [tool.comfy] includes);
these tests run its checks. With comfy-cli importable they also compare with comfy-cli's own zip_files;
without it that test is skipped with the reason (developers: run the script from a venv with comfy-cli).
"""

import importlib.util
import os
import re
import shutil
import struct
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("check_package", os.path.join(ROOT, "scripts", "check-package.py"))
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


def _git_checkout(path):
    try:
        subprocess.run(["git", "-C", path, "rev-parse", "--show-toplevel"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


needs_git = pytest.mark.skipif(shutil.which("git") is None or not _git_checkout(ROOT),
                               reason="the archive is built from `git ls-files`: needs git and a git checkout")


@needs_git
def test_archive_holds_what_comfyui_needs_and_nothing_else():
    # As if every untracked, not-ignored file were committed (a clean clone: exactly `comfy node pack`).
    members, _ = check.archive("as-committed", engine="reproduce")
    print("\n".join(["archive:"] + sorted(members)))
    assert check.problems(members, check.git_files(ROOT, as_committed=True)) == []
    for path in ("__init__.py", "core/gated_edit.py", "nodes/__init__.py", "web/perfusion.js", "data/captions.txt",
                 "LICENSE", "README.md", "pyproject.toml", "requirements.txt", "scripts/make_captions.py"):
        assert path in members
    assert any(m.startswith("workflows/") and m.endswith(".json") for m in members)
    assert not [m for m in members if m.startswith(("tests/", "bench/", ".ci/", ".git")) or m == "scripts/start-comfyui.sh"]


def test_packing_outside_git_ships_no_dev_files():
    # comfy-cli zips the whole folder minus .comfyignore when it finds no git checkout.
    members = check.reproduce(ROOT, [], check.pyproject_includes(ROOT))
    assert check.problems(members, [], closed=False) == []


@pytest.mark.skipif(not check.comfy_cli_available(),
                    reason="comfy-cli is not importable here; developers: `python3 -m venv /tmp/cc && "
                           "/tmp/cc/bin/pip install comfy-cli && /tmp/cc/bin/python scripts/check-package.py`")
@pytest.mark.parametrize("mode", ["git", "as-committed", "no-git"])
def test_reproduction_equals_comfy_cli(mode):
    if mode != "no-git" and not _git_checkout(ROOT):
        pytest.skip("not a git checkout")
    files = [] if mode == "no-git" else check.git_files(ROOT, as_committed=mode == "as-committed")
    assert check.reproduce(ROOT, files, check.pyproject_includes(ROOT)) == check.comfy_cli_archive(ROOT, mode)


# gitwildmatch cases checked against pathspec 1.1.1 (comfy-cli's matcher).
@pytest.mark.parametrize("pattern,path,matched", [
    ("/tests/", "tests/run.sh", True), ("/tests/", "core/tests/x.py", False), ("/tests/", "tests", False),
    ("/.*", ".gitignore", True), ("/.*", ".venv-host/bin/python", True), ("/.*", "docs/.hidden", False),
    ("__pycache__/", "core/__pycache__/a.pyc", True), ("*.pyc", "a/b/c.pyc", True), ("*.pyc", "c.pyc.txt", False),
    ("/node.zip", "node.zip", True), ("/node.zip", "x/node.zip", False), ("/docs/*.md", "docs/a.md", True),
    ("/docs/*.md", "docs/x/a.md", False), ("a?c/", "q/abc/d", True), ("core/x", "q/core/x", False),
])
def test_pattern_subset(pattern, path, matched):
    assert check.match_pattern([pattern])(path) is matched


def test_comfyignore_patterns_are_in_the_reproduced_subset():
    check.match_pattern(check.comfyignore_patterns(ROOT))           # raises on a pattern it cannot reproduce
    with pytest.raises(ValueError, match="gitwildmatch"):
        check.match_pattern(["!keep.txt"])


@pytest.mark.skipif(importlib.util.find_spec("pathspec") is None, reason="pathspec (comfy-cli's matcher) not installed")
def test_pattern_subset_equals_pathspec():
    from pathspec import PathSpec
    patterns = check.comfyignore_patterns(ROOT)
    spec, mine = check.pathspec_matcher(PathSpec, patterns), check.match_pattern(patterns)
    paths = [os.path.relpath(os.path.join(top, n), ROOT).replace(os.sep, "/")
             for top, dirs, names in os.walk(ROOT) for n in dirs + names]
    assert [p for p in paths if spec(p) != mine(p)] == []


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_check_catches_a_dev_file_and_a_missing_module(tmp_path):
    files = ["__init__.py", "core/a.py", "nodes/b.py", "workflows/w.json", "web/perfusion.js", "data/captions.txt",
             "docs/f.md", "LICENSE", "README.md", "requirements.txt", "scripts/make_captions.py", "tests/t.py",
             "bench/b.py"]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x\n")
    (tmp_path / "pyproject.toml").write_text('[tool.comfy]\nincludes = ["scripts/make_captions.py"]\n')
    (tmp_path / ".comfyignore").write_text("/bench/\n/scripts/\n/core/a.py\n")     # forgets tests/, drops core code
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "-A"], check=True)
    tracked = check.git_files(str(tmp_path))
    members = check.reproduce(str(tmp_path), tracked, check.pyproject_includes(str(tmp_path)))
    assert "scripts/make_captions.py" in members and "bench/b.py" not in members
    found = check.problems(members, tracked, root=str(tmp_path))
    assert "must not be shipped: tests/t.py" in found
    assert "missing: core/a.py (tracked, under a shipped folder)" in found
    assert "must not be shipped: .comfyignore" in found                 # dot files stay out


def _pyproject():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_pyproject_has_what_the_registry_reads():
    data = _pyproject()
    project, comfy = data["project"], data["tool"]["comfy"]
    # comfy-cli's normalize_project_name rule (config_parser.py): [a-z0-9._-], alphanumeric at both ends.
    assert re.fullmatch(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?", project["name"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["license"] == {"file": "LICENSE"} and os.path.isfile(os.path.join(ROOT, "LICENSE"))
    assert project["urls"]["Repository"].startswith("https://")
    # comfy-cli's validate_version pattern for [tool.comfy] requires-comfyui (else it drops the field).
    part = r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$"
    assert all(re.match(part, p.strip()) for p in comfy["requires-comfyui"].split(","))
    assert "0.3.64" in comfy["requires-comfyui"]
    assert "Perfusion" in comfy["DisplayName"] and "subject" in comfy["DisplayName"].lower()
    assert "PublisherId" in comfy
    for entry in comfy.get("includes", []):
        assert os.path.exists(os.path.join(ROOT, entry)), entry


def test_icon_is_a_square_png_in_the_repository():
    icon = _pyproject()["tool"]["comfy"]["Icon"]
    assert icon.startswith("https://") and icon.endswith("/docs/images/icon.png")
    with open(os.path.join(ROOT, "docs", "images", "icon.png"), "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width == height and 64 <= width <= 400
