import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)


# Host tests never write into the ComfyUI checkout they run against: its files (bytecode, git data and
# this pack, where it is cloned into the checkout's custom_nodes/, left out) are listed when the session
# starts and compared when it ends; any difference fails the run, naming the paths.
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")


def _comfyui_files(comfy):
    pack = os.path.realpath(ROOT)
    found = {}
    for top, dirs, names in os.walk(comfy):
        dirs[:] = [d for d in dirs if d not in (".git", "__pycache__") and os.path.realpath(os.path.join(top, d)) != pack]
        for name in names + [d + "/" for d in dirs]:
            path = os.path.join(top, name.rstrip("/"))
            try:
                st = os.lstat(path)
            except OSError:
                continue
            found[os.path.relpath(path, comfy) + ("/" if name.endswith("/") else "")] = \
                None if name.endswith("/") else (st.st_size, st.st_mtime_ns)
    return found


def pytest_sessionstart(session):
    if COMFYUI_PATH and os.path.isdir(COMFYUI_PATH):
        session.config._perfusion_comfyui_files = _comfyui_files(COMFYUI_PATH)


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_perfusion_comfyui_files", None)
    if before is None:
        return
    after = _comfyui_files(COMFYUI_PATH)
    changed = sorted(p for p in set(before) | set(after) if before.get(p, 0) != after.get(p, 0))
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"host tests wrote into the ComfyUI checkout {COMFYUI_PATH}: " + ", ".join(changed[:20])
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(message, red=True)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = 1
