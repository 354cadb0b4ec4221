#!/usr/bin/env python3
"""Lists and checks the archive that `comfy node pack` / `comfy node publish` would make of this pack.

    python3 scripts/check-package.py                # what `comfy node pack` makes now (git-tracked files)
    python3 scripts/check-package.py --as-committed # as if every untracked, not-gitignored file were committed
    python3 scripts/check-package.py --no-git       # as comfy-cli packs a folder that is not a git checkout
    python3 scripts/check-package.py --require-comfy-cli   # fail unless comfy-cli itself builds the archive

How comfy-cli chooses the files (comfy-cli 1.23.0, comfy_cli/file_utils.py, function zip_files; called
by `pack` and `publish` in comfy_cli/command/custom_nodes/command.py with
includes = [tool.comfy].includes of pyproject.toml):
  1. the files `git -C . ls-files` lists (list_git_tracked_files), in that order; outside a git checkout
     (no git, or git fails) every file under "." instead, from os.walk, skipping .git and ignored folders;
  2. minus the paths that .comfyignore's patterns match (_load_comfyignore_spec: stripped lines, blank
     lines and lines starting with '#' dropped, pathspec "gitwildmatch"), paths taken relative to "."
     with '/' separators (_normalize_path);
  3. a path at or under an `includes` entry is never ignored (_is_force_included); after step 1 each
     `includes` entry is added from disk: a file as itself, a folder by os.walk (untracked files too),
     skipping paths already added; a missing entry becomes an empty folder entry.
This script calls comfy-cli's own zip_files when comfy_cli is importable (e.g. from a throwaway venv:
`python3 -m venv /tmp/cc && /tmp/cc/bin/pip install comfy-cli && /tmp/cc/bin/python scripts/check-package.py`),
and otherwise reproduces those steps here (`reproduce`), with pathspec when it is importable, else with
`match_pattern`, which implements the subset of gitwildmatch that .comfyignore may use (literal names,
'*', '?', a leading or inner '/' to anchor, a trailing '/' for folders) and refuses any other pattern.

Then it checks the listing: everything a user's ComfyUI needs is there (__init__.py, core/, nodes/,
web/, workflows/, data/, docs/, LICENSE, README.md, pyproject.toml, requirements.txt: every git-tracked
file under those folders), and nothing else (no tests/, bench/, .ci/, dev scripts, venvs, caches).
Exit status 0 when the archive is right, 1 with the reasons otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a user's ComfyUI needs: these files, and every git-tracked file under these folders.
REQUIRED_FILES = ("__init__.py", "LICENSE", "README.md", "pyproject.toml", "requirements.txt",
                  "data/captions.txt", "web/perfusion.js")
SHIPPED_FOLDERS = ("core/", "nodes/", "web/", "workflows/", "data/", "docs/")
# Files outside those folders that belong in the archive too: the source of data/captions.txt.
EXTRA_FILES = ("scripts/make_captions.py",)
# Never in the archive, whatever the mode.
FORBIDDEN = re.compile(r"^(tests|bench)/|^scripts/(?!make_captions\.py$)|^\.|(^|/)(__pycache__|\.pytest_cache)/"
                       r"|\.pyc$|(^|/)\.DS_Store$|^node\.zip$")


# ---- comfy-cli's selection, reproduced (see the module docstring for the source) --------------------

def comfyignore_patterns(root: str = ROOT) -> list[str]:
    """_load_comfyignore_spec's reading of .comfyignore."""
    path = os.path.join(root, ".comfyignore")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern:
    if any(c in pattern for c in "[]!\\") or "**" in pattern:
        raise ValueError(f".comfyignore pattern {pattern!r} uses gitwildmatch syntax that check-package.py "
                         "does not reproduce without pathspec; use names, '*', '?' and '/' only, or install "
                         "pathspec (or comfy-cli) to check it")
    folder_only = pattern.endswith("/")
    body = pattern.strip("/")
    anchored = pattern.startswith("/") or "/" in body
    glob = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in body)
    prefix = "^" if anchored else "^(?:.+/)?"
    suffix = "/.*$" if folder_only else "(?:/.*)?$"
    return re.compile(prefix + glob + suffix)


def match_pattern(patterns: list[str]):
    """A matcher equal to PathSpec.from_lines("gitwildmatch", patterns).match_file for the subset above."""
    regexes = [_pattern_regex(p) for p in patterns]
    return lambda rel: any(r.match(rel) for r in regexes)


def ignore_matcher(patterns: list[str], use_pathspec: bool = True):
    if not patterns:
        return lambda rel: False
    if use_pathspec:
        try:
            from pathspec import PathSpec
        except ImportError:
            pass
        else:
            return pathspec_matcher(PathSpec, patterns)
    return match_pattern(patterns)


def pathspec_matcher(PathSpec, patterns: list[str]):
    """comfy-cli's matcher: PathSpec.from_lines("gitwildmatch", ...), the name comfy-cli uses (pathspec 1.x
    calls it deprecated, with a warning per pattern, and still gives it the same meaning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return PathSpec.from_lines("gitwildmatch", patterns).match_file


def git_files(root: str = ROOT, as_committed: bool = False) -> list[str]:
    """list_git_tracked_files ([] when git is missing or fails); with as_committed, plus the untracked
    files that .gitignore does not exclude (what `git ls-files` lists after `git add -A`)."""
    try:
        files = subprocess.check_output(["git", "-C", root, "ls-files"], text=True).splitlines()
        if as_committed:
            files += subprocess.check_output(["git", "-C", root, "ls-files", "--others", "--exclude-standard"],
                                             text=True).splitlines()
    except (subprocess.SubprocessError, FileNotFoundError):
        return []
    return [f for f in files if f.strip()]


def _norm(path: str) -> str:
    rel = os.path.relpath(path, start=".")
    return "" if rel == "." else rel.replace("\\", "/")


def reproduce(root: str = ROOT, files: list[str] | None = None, includes: list[str] | None = None,
              use_pathspec: bool = True) -> list[str]:
    """The archive's member names, in comfy-cli's order. ``files``: the git listing ([] = not a git
    checkout, walk the folder)."""
    includes = includes or []
    prefixes = [_norm(os.path.normpath(i.lstrip("/"))) for i in includes]
    matches = ignore_matcher(comfyignore_patterns(root), use_pathspec)

    def ignored(rel):
        forced = any(rel == p or rel.startswith(p + "/") for p in prefixes if p)
        return not forced and matches(rel)

    members, seen = [], set()
    with _cwd(root):
        if files:
            for path in files:
                rel = _norm(path)
                if not ignored(rel) and os.path.exists(os.path.normpath(path)):
                    members.append(rel or os.path.basename(path))
                    seen.add(rel)
        else:
            for top, dirs, names in os.walk("."):
                if ".git" in dirs:
                    dirs.remove(".git")
                dirs[:] = [d for d in dirs if not ignored(_norm(os.path.join(top, d)))]
                for name in names:
                    rel = _norm(os.path.join(top, name))
                    if rel not in seen and not ignored(rel):
                        members.append(rel)
                        seen.add(rel)
        for entry in includes:
            entry = os.path.normpath(entry.lstrip("/"))
            rel_entry = _norm(entry)
            if os.path.isfile(entry):
                if not ignored(rel_entry) and rel_entry not in seen:
                    members.append(rel_entry)
                    seen.add(rel_entry)
                continue
            if not os.path.exists(entry):
                members.append(rel_entry.rstrip("/") + "/")
                continue
            for top, dirs, names in os.walk(entry):
                dirs[:] = [d for d in dirs if not ignored(_norm(os.path.join(top, d)))]
                for name in names:
                    rel = _norm(os.path.join(top, name))
                    if rel not in seen and not ignored(rel):
                        members.append(rel)
                        seen.add(rel)
    return members


# ---- comfy-cli's own functions -------------------------------------------------------------------

def comfy_cli_available() -> bool:
    try:
        import comfy_cli.file_utils  # noqa: F401
    except Exception:
        return False
    return True


def comfy_cli_archive(root: str = ROOT, mode: str = "git") -> list[str]:
    """Member names of the zip that comfy-cli's zip_files writes, with [tool.comfy] includes read by
    comfy-cli's own config parser. mode "as-committed" / "no-git" replaces its git listing."""
    from comfy_cli import file_utils
    from comfy_cli.registry.config_parser import extract_node_configuration

    with _cwd(root), tempfile.TemporaryDirectory() as tmp:
        config = extract_node_configuration(os.path.join(root, "pyproject.toml"))
        includes = config.tool_comfy.includes if config and config.tool_comfy else []
        original = file_utils.list_git_tracked_files
        if mode == "as-committed":
            file_utils.list_git_tracked_files = lambda base=".": git_files(root, as_committed=True)
        elif mode == "no-git":
            file_utils.list_git_tracked_files = lambda base=".": []
        try:
            target = os.path.join(tmp, "node.zip")
            with contextlib.redirect_stdout(io.StringIO()):
                file_utils.zip_files(target, includes=includes)
        finally:
            file_utils.list_git_tracked_files = original
        with zipfile.ZipFile(target) as z:
            return z.namelist()


# ---- the checks ---------------------------------------------------------------------------------

def pyproject_includes(root: str = ROOT) -> list[str]:
    try:
        import tomllib
    except ImportError:                      # Python 3.10: read the one line
        text = open(os.path.join(root, "pyproject.toml"), encoding="utf-8").read()
        m = re.search(r"^includes\s*=\s*\[(.*?)\]", text, re.M | re.S)
        return re.findall(r"\"([^\"]+)\"", m.group(1)) if m else []
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        return tomllib.load(f).get("tool", {}).get("comfy", {}).get("includes", [])


def problems(members: list[str], tracked: list[str], closed: bool = True, root: str = ROOT) -> list[str]:
    """What is wrong with an archive listing. ``tracked``: the files that should be shipped from (the
    git listing of the mode). ``closed``: also refuse files outside the shipped set (git modes)."""
    have = set(members)
    out = [f"missing: {f}" for f in REQUIRED_FILES + EXTRA_FILES if f not in have]
    for folder in ("core/", "nodes/", "workflows/"):
        if not any(m.startswith(folder) for m in members):
            out.append(f"missing: {folder} (no file of it is in the archive)")
    out += [f"missing: {f} (tracked, under a shipped folder)" for f in tracked
            if f.startswith(SHIPPED_FOLDERS) and f not in have and f not in REQUIRED_FILES
            and os.path.exists(os.path.join(root, f)) and not FORBIDDEN.search(f)]
    out += [f"must not be shipped: {m}" for m in members if FORBIDDEN.search(m)]
    if closed:
        allowed = set(REQUIRED_FILES) | set(EXTRA_FILES)
        out += [f"not expected in the archive: {m} (add it to .comfyignore, or to the lists in "
                "scripts/check-package.py if users need it)" for m in members
                if m not in allowed and not m.startswith(SHIPPED_FOLDERS) and not FORBIDDEN.search(m)]
    return out


def archive(mode: str = "git", engine: str = "auto", root: str = ROOT) -> tuple[list[str], str]:
    """(member names, which engine built them). engine: auto | comfy-cli | reproduce."""
    if engine == "comfy-cli" or (engine == "auto" and comfy_cli_available()):
        return comfy_cli_archive(root, mode), "comfy-cli"
    files = [] if mode == "no-git" else git_files(root, as_committed=mode == "as-committed")
    return reproduce(root, files, pyproject_includes(root)), "reproduced"


def untracked_shipped(root: str = ROOT) -> list[str]:
    tracked = set(git_files(root))
    return [f for f in git_files(root, as_committed=True) if f not in tracked and f.startswith(SHIPPED_FOLDERS)]


def _cwd(path):
    @contextlib.contextmanager
    def inside():
        old = os.getcwd()
        os.chdir(path)
        try:
            yield
        finally:
            os.chdir(old)
    return inside()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--as-committed", action="store_true", help="count untracked, not-ignored files as committed")
    group.add_argument("--no-git", action="store_true", help="pack as comfy-cli does outside a git checkout")
    parser.add_argument("--require-comfy-cli", action="store_true", help="fail unless comfy-cli is importable")
    parser.add_argument("--quiet", action="store_true", help="no listing, only problems")
    args = parser.parse_args(argv)
    mode = "as-committed" if args.as_committed else "no-git" if args.no_git else "git"
    if args.require_comfy_cli and not comfy_cli_available():
        print("check-package: comfy-cli is not importable here (pip install comfy-cli in a throwaway venv)")
        return 1
    if mode != "no-git" and not git_files():
        print("check-package: not a git checkout (or no git); comfy-cli would zip the whole folder: try --no-git")
        return 1
    members, engine = archive(mode)
    if not args.quiet:
        print(f"archive ({mode}, built by {engine}): {len(members)} files")
        for m in sorted(members):
            print(f"  {m}")
    found = problems(members, git_files(ROOT, as_committed=mode == "as-committed") if mode != "no-git" else [],
                     closed=mode != "no-git")
    if mode == "git":
        late = untracked_shipped()
        if late:
            print(f"note: {len(late)} untracked files under shipped folders are not in the archive until "
                  "committed: " + ", ".join(late))
        gone = [f for f in git_files() if not os.path.exists(os.path.join(ROOT, f))]
        if gone:
            print(f"note: {len(gone)} tracked files are deleted here (comfy-cli skips them with 'File not "
                  "found'): " + ", ".join(gone))
    for p in found:
        print(f"check-package: {p}")
    if not found:
        print("check-package: ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
