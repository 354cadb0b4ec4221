"""Makes the pack's pictures against a real ComfyUI server and Debian's chromium:

* docs/images/<slug>.png: a canvas screenshot of every template, as the frontend draws it (the
  loaders' text included), and docs/images/first-start.png: Load Rank-1 Concept on a first start;
* workflows/<template>.jpg: the thumbnail Workflow > Browse Templates asks for (frontend 1.27.10:
  /api/workflow_templates/<pack folder>/<template>.jpg);
* docs/images/gate-sweep-grid.png: the gate-sweep template's output, run through the server on the
  tiny random test models (so its cells are noise, not pictures).

The server is the test suite's (tests/server_helpers.py): this pack, the tiny-model test pack, stand-in
files in a temporary folder. The concept files shown are random concepts with an SD1.5 checkpoint's
layer shapes, so their sizes are real ones.

    COMFYUI_PATH=/path/to/ComfyUI "$(bash tests/run.sh --setup-only)" scripts/make_pictures.py [--only NAME]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
WORKFLOWS = ROOT / "workflows"
IMAGES = ROOT / "docs" / "images"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
APP = "window.comfyAPI.app.app"
DOC_WIDTH = 1400          # docs screenshots are scaled to this width, then reduced to a palette
THUMBNAIL = 384           # square, as the template card shows it (max 256 css px, sharp on 1.5x screens)
MARGIN = 30

# The docs picture of each template (its file name is its title in Browse Templates).
SLUGS = {
    "Perfusion - Train a Concept from Photos": "template-train-concept",
    "Perfusion - Generate with One Concept": "template-one-concept",
    "Perfusion - Two Concepts in One Image": "template-two-concepts",
    "Perfusion - Gate Sweep Grid": "template-gate-sweep",
    "Perfusion - Two Subject Photos and a Concept": "template-two-subjects",
    "Perfusion - MS-Diffusion Two Subjects and a Concept (SDXL)": "template-ms-diffusion",
}
GATE_SWEEP = "Perfusion - Gate Sweep Grid"
# The nodes each thumbnail shows, at a readable scale (the whole graph would be a blur at 256 px).
THUMBNAIL_FOCUS = {
    "Perfusion - Train a Concept from Photos": [1, 2, 3],
    "Perfusion - Generate with One Concept": [2, 3],
    "Perfusion - Two Concepts in One Image": [2, 3, 4],
    "Perfusion - Gate Sweep Grid": [2, 6],
    "Perfusion - Two Subject Photos and a Concept": [4, 5, 7],
    "Perfusion - MS-Diffusion Two Subjects and a Concept (SDXL)": [4, 7, 9],
}


def stand_in_files(base: Path, pack, host):
    """Files the templates name, in the server's folders: concepts, an IP-Adapter file, two photos."""
    import numpy as np
    from PIL import Image, ImageDraw
    from safetensors.torch import save_file

    from concept_factory import SD15_LAYERS, make_concept, random_covariance
    from subject_factory import ip_state_dict

    C = random_covariance(768, 7)
    for name, trigger, superclass in (("my_concept", "sks", "teddy"), ("first_concept", "sks", "dog"),
                                      ("second_concept", "ohwx", "cat")):
        concept = make_concept(pack.core.concept_file.Concept, SD15_LAYERS, {"clip_l": 768}, trigger=trigger,
                               superclass=superclass, model="sd1", seed=len(name), covariance=C,
                               name=f"{name}.safetensors")
        pack.core.concept_file.write_concept(str(base / "models" / "perfusion" / f"{name}.safetensors"), concept)
    tensors = ip_state_dict(pack, host.tiny_model("sd1"), "plus", seed=3)
    save_file({k: v.half().contiguous() for k, v in tensors.items()},
              str(base / "models" / "ipadapter" / "ip-adapter-plus_sd15.safetensors"))
    # the MS-Diffusion template's files: an SDXL concept, and an adapter file in MS-Diffusion's layout (tiny widths)
    from concept_factory import FAMILY_TOWER_WIDTHS, SDXL_LAYERS
    from subject_factory import ms_nested
    import torch
    xl = make_concept(pack.core.concept_file.Concept, SDXL_LAYERS, FAMILY_TOWER_WIDTHS["sdxl"], trigger="sks",
                      superclass="teddy", model="sdxl", seed=3, covariance=random_covariance(2048, 7),
                      name="my_sdxl_concept.safetensors")
    pack.core.concept_file.write_concept(str(base / "models" / "perfusion" / "my_sdxl_concept.safetensors"), xl)
    torch.save(ms_nested(pack, host.tiny_model("sdxl"), host.tiny_clip("sdxl")), str(base / "models" / "subject_ref" / "ms_adapter.bin"))
    for name, colour in (("subject1_dog.png", (150, 100, 60)), ("subject2_cat.png", (90, 90, 100))):
        ys = np.linspace(0, 1, 384)[:, None, None]
        sky = (np.array([170, 200, 230]) * (1 - ys) + np.array([90, 140, 80]) * ys).repeat(384, 1)
        image = Image.fromarray(sky.round().astype(np.uint8))
        draw = ImageDraw.Draw(image)
        draw.ellipse((110, 150, 290, 330), fill=colour)                      # body
        draw.ellipse((210, 90, 320, 200), fill=colour)                       # head
        draw.ellipse((280, 120, 294, 134), fill=(20, 20, 20))                # eye
        image.save(base / "input" / name)


def tiny_api(workflow, object_info, to_api, size=128, steps=6):
    """The template in the API format on the tiny model (as tests/test_host_server.py runs them)."""
    api = to_api(workflow, object_info)
    for node in api.values():
        kind = node["class_type"]
        if kind == "CheckpointLoaderSimple":
            node.update(class_type="PerfusionTest_TinyCheckpoint", inputs={"family": "sd1"})
        elif kind == "PerfusionLoadConcept":
            node["inputs"]["concept_name"] = "test_sks.safetensors"
        elif kind == "EmptyLatentImage":
            node["inputs"].update(width=size, height=size)
        elif kind in ("KSampler", "PerfusionGateSweep"):
            node["inputs"]["steps"] = steps
    return api


def gate_sweep_grid(server, to_api, out: Path):
    from PIL import Image
    workflow = json.loads((WORKFLOWS / f"{GATE_SWEEP}.json").read_text())
    result = server.run(tiny_api(workflow, server.get("/object_info"), to_api), seconds=600)
    if result["status"]["status_str"] != "success":
        raise SystemExit(f"the gate sweep failed: {json.dumps(result['status'])[:2000]}")
    image = next(img for o in result["outputs"].values() for img in o.get("images", []))
    grid = Image.open(server.base / "output" / image["subfolder"] / image["filename"])
    grid.save(out, optimize=True)
    return grid.size


FIT_AND_DRAW = f"""async ([workflow, width, height, margin, keep, focus]) => {{
    const app = {APP};
    await app.loadGraphData(workflow);
    if (keep) for (const n of [...app.graph._nodes]) if (!keep.includes(n.id)) app.graph.remove(n);
    const loaders = () => app.graph._nodes.filter(n => ["PerfusionLoadConcept", "SubjectReferenceLoader"].includes(n.type));
    for (let i = 0; i < 100 && !loaders().every(n => n.perfusionLines !== undefined); i++)
        await new Promise(r => setTimeout(r, 50));
    await new Promise(r => setTimeout(r, 300));
    // Fits the view to the nodes' boxes. Nodes reach their drawn size (widgets' minimum, the loaders' text)
    // only once drawn, so it fits, draws, and fits again on the sizes as drawn.
    const fit = () => {{
        let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
        for (const n of app.graph._nodes) {{
            if (focus && !focus.includes(n.id)) continue;
            const [x, y, w, h] = n.getBounding();
            x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
        }}
        y0 -= 20;                                        // the node source badges above the title bars
        if (focus) {{                                    // a square around the focus nodes
            const side = Math.max(x1 - x0, y1 - y0), cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
            [x0, y0, x1, y1] = [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2];
        }}
        const scale = Math.min((width - 2 * margin) / (x1 - x0), (height - 2 * margin) / (y1 - y0), 1.2);
        app.canvas.ds.scale = scale;
        app.canvas.ds.offset = [(width - (x1 - x0) * scale) / 2 / scale - x0, (height - (y1 - y0) * scale) / 2 / scale - y0];
        app.canvas.setDirty(true, true);
        app.canvas.draw(true, true);
        return [x0, y0, x1, y1, scale];
    }};
    fit();
    await new Promise(r => setTimeout(r, 300));
    const [x0, y0, x1, y1, scale] = fit();
    await new Promise(r => setTimeout(r, 800));          // DOM widgets (prompts, notes) follow the canvas
    app.canvas.draw(true, true);
    const [left, top] = [(x0 + app.canvas.ds.offset[0]) * scale, (y0 + app.canvas.ds.offset[1]) * scale];
    return {{clip: [left, top, (x1 - x0) * scale, (y1 - y0) * scale], scale}};
}}"""


def open_page(playwright, url, width, height):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.goto(url, wait_until="domcontentloaded", timeout=60000)
    page.wait_for_function(f"() => {APP}?.graph && window.LiteGraph?.registered_node_types?.PerfusionGateStrength",
                           timeout=90000)
    page.evaluate(f"() => {APP}.extensionManager.command.execute('Workspace.ToggleFocusMode')")   # no menus, no sidebar
    page.add_style_tag(content=".comfy-menu-hamburger { display: none !important; }")            # focus mode's own button
    page.wait_for_timeout(500)
    return browser, page


def screenshot(page, workflow, width, height, margin=MARGIN, keep=None, focus=None):
    """The graph (or only the nodes `keep`; or a square around the nodes `focus`), fitted into a width x
    height viewport, as the browser shows it."""
    from PIL import Image
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(300)
    fitted = page.evaluate(FIT_AND_DRAW, [workflow, width, height, margin, keep, focus])
    left, top, w, h = fitted["clip"]
    clip = {"x": max(0, left - margin / 2), "y": max(0, top - margin / 2),
            "width": min(width, w + margin), "height": min(height, h + margin)}
    return Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")


def save_doc_png(image, path, width=DOC_WIDTH, colours=64):
    from PIL import Image
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def save_thumbnail(image, path, size=THUMBNAIL):
    from PIL import Image
    image.resize((size, size), Image.LANCZOS).save(path, quality=80, optimize=True, progressive=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="one template (its file name without .json), or 'grid'")
    args = parser.parse_args()
    if not os.environ.get("COMFYUI_PATH"):
        raise SystemExit("set COMFYUI_PATH to a ComfyUI folder")
    if not os.path.exists(CHROMIUM):
        raise SystemExit("Debian's chromium is needed (apt-get install chromium)")
    sys.path.insert(0, str(TESTS))
    import host
    from playwright.sync_api import sync_playwright
    from server_helpers import running_server
    from workflow_api import to_api
    pack = host.load_pack()

    IMAGES.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="perfusion-pictures-"))
    (work / "ComfyUI").mkdir()
    # The pictures show the server's folders (the loaders' empty state names them): reach the temporary
    # folder through /tmp/ComfyUI where that name is free, so that they read like a user's.
    link = Path(tempfile.gettempdir()) / "ComfyUI"
    if not os.path.lexists(link):
        os.symlink(work / "ComfyUI", link)
        base = link
    else:
        link, base = None, work / "ComfyUI"
    (base / "user" / "default").mkdir(parents=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(
        {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
         "Comfy.Graph.CanvasMenu": False, "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.3}))
    written = []
    try:
        with running_server(base) as server, sync_playwright() as playwright:
            stand_in_files(base, pack, host)
            names = [p.stem for p in sorted(WORKFLOWS.glob("*.json"))]
            if args.only in (None, "grid"):
                size = gate_sweep_grid(server, to_api, IMAGES / "gate-sweep-grid.png")
                written.append((IMAGES / "gate-sweep-grid.png", size))
            if args.only != "grid":
                browser, page = open_page(playwright, server.url, 1600, 1000)
                for name in names:
                    if args.only and args.only != name:
                        continue
                    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
                    image = screenshot(page, workflow, 1600, 1000)
                    doc = IMAGES / f"{SLUGS.get(name, name)}.png"
                    save_doc_png(image, doc)
                    thumb = WORKFLOWS / f"{name}.jpg"
                    save_thumbnail(screenshot(page, workflow, 800, 800, margin=10, 
                                              focus=THUMBNAIL_FOCUS.get(name) or [n["id"] for n in workflow["nodes"]]), thumb)
                    written += [(doc, image.size), (thumb, (THUMBNAIL, THUMBNAIL))]
                if args.only is None:
                    # A first start: no concept files yet; Load Rank-1 Concept says where they go.
                    aside = work / "aside"
                    aside.mkdir()
                    for f in (base / "models" / "perfusion").glob("*.safetensors"):
                        f.rename(aside / f.name)
                    one = json.loads((WORKFLOWS / "Perfusion - Generate with One Concept.json").read_text())
                    keep = [n["id"] for n in one["nodes"] if n["type"] in ("CheckpointLoaderSimple", "PerfusionLoadConcept")]
                    page.evaluate(f"() => {APP}.refreshComboInNodes()")          # as a fresh page would list them
                    image = screenshot(page, one, 900, 400, keep=keep)
                    save_doc_png(image, IMAGES / "first-start.png", width=900)
                    written.append((IMAGES / "first-start.png", image.size))
                browser.close()
    finally:
        if link is not None:
            os.unlink(link)
        shutil.rmtree(work, ignore_errors=True)
    total = 0
    for path, size in written:
        total += path.stat().st_size
        print(f"{path.relative_to(ROOT)}: {size[0]}x{size[1]}, {path.stat().st_size // 1024} KB")
    print(f"{total // 1024} KB in all")


if __name__ == "__main__":
    main()
