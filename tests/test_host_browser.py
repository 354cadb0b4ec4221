"""Host test in a real browser: Debian's chromium, driven headless by playwright (no browser download),
against the real ComfyUI server with this pack: the extension registers, the Gate Strength sliders
render and change their values, the example workflows load without missing nodes, a concept's file
info shows on its node; screenshots are saved."""

import contextlib
import json
import os
import shutil

import pytest

import host  # skips this module without COMFYUI_PATH

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip("browser test: Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser test: pip install playwright (no browser download needed)")

from server_helpers import running_server  # noqa: E402

WORKFLOWS = os.path.join(host.ROOT, "workflows")
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]
APP = "window.comfyAPI.app.app"
# JS preamble: `app`, and `newNode(type)` that creates a node and adds it to the graph.
NEW_NODE = f"""const app = {APP};
        const LiteGraph = window.LiteGraph ?? window.comfyAPI.litegraph?.LiteGraph;
        const newNode = (type) => {{ const n = LiteGraph.createNode(type); app.graph.add(n); return n; }};"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser_server")
    settings = base / "user" / "default"
    settings.mkdir(parents=True)
    (settings / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))   # no welcome dialog
    with running_server(base) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url, wait_until="domcontentloaded", timeout=60000)
        page.wait_for_function("() => window.comfyAPI?.app?.app?.graph && "
                               "window.LiteGraph?.registered_node_types?.PerfusionGateStrength", timeout=90000)
        page.errors, page.base = errors, base
        yield page
        browser.close()


def test_extension_is_registered_and_served(page):
    assert page.evaluate(f"() => {APP}.extensions.some(e => e.name === 'perfusion.ui')")
    assert not [e for e in page.errors if "perfusion" in e.lower()]


def test_gate_strength_sliders_render_and_change(page):
    state = page.evaluate(f"""() => {{
        {NEW_NODE}
        const node = newNode("PerfusionGateStrength");
        const sliders = node.widgets.filter(w => w.type === "slider").map(w => w.name);
        const beta = node.widgets.find(w => w.name === "beta");
        beta.value = 0.55; beta.callback?.(0.55);
        const toggle = node.widgets.find(w => w.name === "preview on release");
        return {{sliders, beta: beta.value, toggle: Boolean(toggle), toggleSerialized: toggle?.serialize !== false,
                 inputs: node.widgets.map(w => w.name)}};
    }}""")
    assert {"beta", "tau", "strength", "start_percent", "end_percent"} <= set(state["sliders"]), state
    assert state["beta"] == pytest.approx(0.55)
    assert state["toggle"] and not state["toggleSerialized"]
    page.screenshot(path=str(page.base / "gate_strength.png"))


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(WORKFLOWS) if f.endswith(".json")))
def test_example_workflow_loads_without_missing_nodes(page, name):
    workflow = json.load(open(os.path.join(WORKFLOWS, name)))
    types = page.evaluate(f"""async (workflow) => {{
        const app = {APP};
        await app.loadGraphData(workflow);
        return app.graph._nodes.map(n => [n.type, Boolean(n.has_errors), Boolean(n.constructor?.nodeData) || n.type === "Note"]);
    }}""", workflow)
    expected = {n["type"] for n in workflow["nodes"]}
    assert {t for t, _, _ in types} == expected
    missing = [t for t, errors, known in types if errors or not known]
    assert missing == [], missing
    page.screenshot(path=str(page.base / f"{name}.png"))


def test_load_node_shows_the_concept_file_info(page):
    lines = page.evaluate(f"""async () => {{
        {NEW_NODE}
        const node = newNode("PerfusionLoadConcept");
        const combo = node.widgets.find(w => w.name === "concept_name");
        combo.value = "test_sks.safetensors"; combo.callback?.(combo.value);
        for (let i = 0; i < 50 && !(node.perfusionLines ?? []).join().includes("sks"); i++)
            await new Promise(r => setTimeout(r, 100));
        app.canvas.setDirty(true, true);
        return node.perfusionLines;
    }}""")
    assert lines and 'trigger "sks"' in lines[0] and "sd1" in lines[1], lines
    page.screenshot(path=str(page.base / "load_concept.png"))


def test_preview_on_release_requeues_once_after_the_slider_stops(page):
    queued = page.evaluate(f"""async () => {{
        {NEW_NODE}
        const node = newNode("PerfusionGateStrength");
        const calls = [];
        const original = app.queuePrompt;
        app.queuePrompt = async (...args) => {{ calls.push(args); }};
        try {{
            const beta = node.widgets.find(w => w.name === "beta");
            const drag = () => {{ for (const v of [0.5, 0.52, 0.55]) {{ beta.value = v; beta.callback?.(v); }} }};
            drag();                                                  // preview off: nothing queued
            await new Promise(r => setTimeout(r, 700));
            const off = calls.length;
            const toggle = node.widgets.find(w => w.name === "preview on release");
            toggle.value = true; toggle.callback?.(true);
            drag();                                                  // a drag = several changes, one queue
            await new Promise(r => setTimeout(r, 700));
            return {{off, on: calls.length - off, saved: node.properties.perfusionPreview}};
        }} finally {{ app.queuePrompt = original; }}
    }}""")
    assert queued == {"off": 0, "on": 1, "saved": True}


def test_training_progress_shows_on_the_node(page):
    lines = page.evaluate(f"""async () => {{
        {NEW_NODE}
        const node = newNode("PerfusionTrainConcept");
        window.comfyAPI.api.api.dispatchCustomEvent("perfusion.train", {{node: String(node.id), step: 12, steps: 400, loss: 0.123456}});
        await new Promise(r => setTimeout(r, 50));
        return node.perfusionLines;
    }}""")
    assert lines == ["step 12 / 400 · loss 0.1235"]


def flag_workflow(checkpoint):
    """A checkpoint loader feeding 'Load Rank-1 Concept' with an sd1 concept, in the frontend's format."""
    return {"last_node_id": 2, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
            "links": [[1, 1, 0, 2, 0, "MODEL"]],
            "nodes": [{"id": 1, "type": "CheckpointLoaderSimple", "pos": [80, 120], "size": [320, 100], "flags": {},
                       "order": 0, "mode": 0, "inputs": [], "properties": {}, "widgets_values": [checkpoint],
                       "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}, {"name": "CLIP", "type": "CLIP", "links": []},
                                   {"name": "VAE", "type": "VAE", "links": []}]},
                      {"id": 2, "type": "PerfusionLoadConcept", "pos": [480, 120], "size": [320, 130], "flags": {},
                       "order": 1, "mode": 0, "properties": {}, "widgets_values": ["test_sks.safetensors", 1.0],
                       "inputs": [{"name": "model", "type": "MODEL", "link": 1}, {"name": "clip", "type": "CLIP", "link": None}],
                       "outputs": [{"name": "model", "type": "MODEL", "links": []}, {"name": "clip", "type": "CLIP", "links": []}]}]}


LOAD_AND_WAIT = f"""async ([workflow, text]) => {{
    const app = {APP};
    await app.loadGraphData(workflow);
    const load = app.graph._nodes.find(n => n.type === "PerfusionLoadConcept");
    for (let i = 0; i < 50 && !(load.perfusionLines ?? []).join().includes(text); i++)
        await new Promise(r => setTimeout(r, 100));
    app.canvas.setDirty(true, true);
    return [...(load.perfusionLines ?? []), load.perfusionWarning];
}}"""


def test_a_concept_for_another_family_is_flagged_before_queueing(page):
    mismatch = page.evaluate(LOAD_AND_WAIT, [flag_workflow("fake_sdxl.safetensors"), "made for"])
    page.wait_for_timeout(300)
    page.screenshot(path=str(page.base / "family_flag.png"))
    assert "⚠ made for sd1; fake_sdxl.safetensors is sdxl" in mismatch and mismatch[-1] is True, mismatch
    match = page.evaluate(LOAD_AND_WAIT, [flag_workflow("fake_sd15.safetensors"), "sd1"])
    page.wait_for_timeout(1000)
    match = page.evaluate(LOAD_AND_WAIT, [flag_workflow("fake_sd15.safetensors"), "sd1"])
    assert 'trigger "sks"' in match[0] and not any("made for" in str(x) for x in match) and match[-1] is False, match


class Prefix(str):
    """An intended text value given by its beginning (notes and long prompts)."""


# What every widget of every template should hold once the frontend has loaded it, by name: the
# template's widgets_values must land in these slots (a "control after generate" widget the template
# does not expect shifts every later value by one).
INTENDED = {
    "Perfusion - Train a Concept from Photos.json": {
        1: {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
        2: {"folder": "my_subject", "resize_method": "None"},
        3: {"trigger": "sks", "superclass": "teddy", "steps": 400, "batch_size": 4, "grad_accumulation": 4,
            "lr_embedding": 0.006, "lr_values": 0.03, "train_beta": 0.75, "train_tau": 0.1, "resolution": 512,
            "flip": True, "masked_loss": True, "seed": 0, "filename": "my_concept", "gradient_checkpointing": False},
        4: {},
        5: {"text": "a photo of sks on a wooden table in a garden"},
        6: {"text": "blurry, low quality"},
        7: {"width": 512, "height": 512, "batch_size": 1},
        8: {"seed": 42, "control_after_generate": "fixed", "steps": 30, "cfg": 7, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1},
        9: {},
        10: {"filename_prefix": "perfusion-trained"},
        11: {"text": Prefix("Train a concept from your photos\n")},
    },
    "Perfusion - Generate with One Concept.json": {
        1: {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
        2: {"concept_name": "my_concept.safetensors", "strength": 1},
        3: {"trigger": "", "beta": 0.7, "tau": 0.15, "strength": 1, "key_lock": "local", "start_percent": 0,
            "end_percent": 1, "preview on release": False},
        4: {"text": "a photo of sks on a beach at sunset, detailed, sharp focus"},
        5: {"text": "blurry, low quality, deformed"},
        6: {"width": 512, "height": 512, "batch_size": 1},
        7: {"seed": 42, "control_after_generate": "fixed", "steps": 30, "cfg": 7, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1},
        8: {},
        9: {"filename_prefix": "perfusion"},
        10: {"text": Prefix("Generate with one Perfusion concept\n")},
    },
    "Perfusion - Two Concepts in One Image.json": {
        1: {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
        2: {"concept_name": "first_concept.safetensors", "strength": 1},
        3: {"concept_name": "second_concept.safetensors", "strength": 1},
        4: {"trigger": "", "beta": 0.6, "tau": 0.15, "strength": 1, "key_lock": "local", "start_percent": 0,
            "end_percent": 1, "preview on release": False},
        5: {"text": "a photo of sks sitting next to ohwx in a garden"},
        6: {"text": "blurry, low quality, deformed"},
        7: {"width": 512, "height": 512, "batch_size": 1},
        8: {"seed": 7, "control_after_generate": "fixed", "steps": 30, "cfg": 7, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1},
        9: {},
        10: {"filename_prefix": "perfusion-two"},
        11: {"text": Prefix("Two concepts in one image\n")},
    },
    "Perfusion - Gate Sweep Grid.json": {
        1: {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
        2: {"concept_name": "my_concept.safetensors", "strength": 1},
        3: {"text": "a photo of sks wearing a tiny hat in a snowy forest"},
        4: {"text": "blurry, low quality"},
        5: {"width": 512, "height": 512, "batch_size": 1},
        6: {"seed": 42, "control_after_generate": "fixed", "steps": 25, "cfg": 7, "sampler_name": "euler",
            "scheduler": "normal", "trigger": "", "betas": "0.4, 0.5, 0.6, 0.7, 0.8", "strengths": "1.0", "tau": 0.15},
        7: {"filename_prefix": "perfusion-gate-sweep"},
        8: {"text": Prefix("Gate sweep: the fidelity / prompt-alignment trade-off\n")},
    },
    "Perfusion - Two Subject Photos and a Concept.json": {
        1: {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
        2: {"concept_name": "my_concept.safetensors", "strength": 1},
        3: {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"},
        4: {"adapter_name": "ipadapter/ip-adapter-plus_sd15.safetensors"},
        5: {"image": "subject1_dog.png", "upload": "image"},
        6: {"image": "subject2_cat.png", "upload": "image"},
        7: {"x": 0.05, "y": 0.2, "width": 0.4, "height": 0.7, "weight": 0.8, "start_percent": 0, "end_percent": 1,
            "phrase": "", "box editor": ""},
        8: {"x": 0.55, "y": 0.2, "width": 0.4, "height": 0.7, "weight": 0.8, "start_percent": 0, "end_percent": 1,
            "phrase": "", "box editor": ""},
        9: {"scale": 0.6},
        10: {"text": Prefix("a photo of sks ")},
        11: {"text": "blurry, low quality, deformed"},
        12: {"width": 512, "height": 512, "batch_size": 1},
        13: {"seed": 42, "control_after_generate": "fixed", "steps": 30, "cfg": 7, "sampler_name": "euler",
             "scheduler": "normal", "denoise": 1},
        14: {},
        15: {"filename_prefix": "perfusion-subjects"},
        16: {"text": Prefix("Two subjects from reference photos, with a Perfusion concept\n")},
    },
    "Perfusion - MS-Diffusion Two Subjects and a Concept (SDXL).json": {
        1: {"ckpt_name": "sd_xl_base_1.0.safetensors"},
        2: {"concept_name": "my_sdxl_concept.safetensors", "strength": 1},
        3: {"clip_name": "clip_vision_g.safetensors"},
        4: {"adapter_name": "subject_ref/ms_adapter.bin"},
        5: {"image": "subject1_dog.png", "upload": "image"},
        6: {"image": "subject2_cat.png", "upload": "image"},
        7: {"x": 0.0, "y": 0.25, "width": 0.4, "height": 0.5, "weight": 1, "start_percent": 0, "end_percent": 1,
            "phrase": "dog", "box editor": ""},
        8: {"x": 0.6, "y": 0.25, "width": 0.4, "height": 0.5, "weight": 1, "start_percent": 0, "end_percent": 1,
            "phrase": "cat", "box editor": ""},
        9: {"scale": 0.6},
        10: {"text": Prefix("best quality, high quality, a sks teddy bear")},
        11: {"text": "monochrome, lowres, bad anatomy, worst quality, low quality"},
        12: {"width": 1216, "height": 832, "batch_size": 1},
        13: {"seed": 42, "control_after_generate": "fixed", "steps": 30, "cfg": 7.5, "sampler_name": "euler",
             "scheduler": "normal", "denoise": 1},
        14: {},
        15: {"filename_prefix": "perfusion-ms-diffusion"},
        16: {"text": Prefix("MS-Diffusion: two subjects in two boxes, with a Perfusion concept (SDXL)\n")},
    },
}
TEMPLATES = sorted(f for f in os.listdir(WORKFLOWS) if f.endswith(".json"))
LOADERS = ("PerfusionLoadConcept", "SubjectReferenceLoader")

# Loads a workflow and waits until every loader shows its text (it can make the node taller).
LOAD_TEMPLATE = f"""async (workflow) => {{
    const app = {APP};
    await app.loadGraphData(workflow);
    const loaders = () => app.graph._nodes.filter(n => {json.dumps(LOADERS)}.includes(n.type));
    for (let i = 0; i < 100 && !loaders().every(n => n.perfusionLines !== undefined); i++)
        await new Promise(r => setTimeout(r, 50));
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    return app.graph._nodes.map(n => ({{id: n.id, type: n.type, title: n.title, bounds: Array.from(n.getBounding()),
        lines: n.perfusionLines ?? null, widgets: (n.widgets ?? []).map(w => [w.name, w.value])}}));
}}"""


def test_every_template_is_listed_in_the_intended_values():
    assert sorted(INTENDED) == TEMPLATES


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_widget_of_every_template_holds_its_intended_value(page, name):
    nodes = page.evaluate(LOAD_TEMPLATE, json.load(open(os.path.join(WORKFLOWS, name))))
    intended = INTENDED[name]
    assert sorted(n["id"] for n in nodes) == sorted(intended)
    wrong = []
    for node in nodes:
        got, want = dict(node["widgets"]), intended[node["id"]]
        if len(got) != len(node["widgets"]) or set(got) != set(want):
            wrong.append((node["id"], node["type"], "widgets", [w for w, _ in node["widgets"]], sorted(want)))
            continue
        for widget, value in want.items():
            ok = (isinstance(got[widget], str) and got[widget].startswith(value)) if isinstance(value, Prefix) \
                else got[widget] == pytest.approx(value) if isinstance(value, float) else got[widget] == value
            if not ok:
                wrong.append((node["id"], node["type"], widget, got[widget], value))
    assert wrong == [], wrong
    trainers = [n for n in nodes if n["type"] in ("PerfusionTrainConcept", "SubjectReferenceTrain")]
    assert all("control_after_generate" not in dict(n["widgets"]) for n in trainers)


@contextlib.contextmanager
def empty_model_folders(page):
    """The browser server's models/perfusion without its concept files (models/ipadapter and
    models/subject_ref are empty there anyway): a newcomer's first start."""
    folder = page.base / "models" / "perfusion"
    aside = page.base / "aside"
    aside.mkdir(exist_ok=True)
    moved = [f for f in folder.iterdir() if f.suffix == ".safetensors"]
    for f in moved:
        f.rename(aside / f.name)
    try:
        yield folder
    finally:
        for f in moved:
            (aside / f.name).rename(f)


def overlaps(nodes, gap=16):
    """Pairs of nodes whose boxes (title bar included) come closer than `gap` pixels."""
    out = []
    for k, a in enumerate(nodes):
        for b in nodes[k + 1:]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["bounds"], b["bounds"]
            if ax < bx + bw + gap and bx < ax + aw + gap and ay < by + bh + gap and by < ay + ah + gap:
                out.append((f"{a['id']} {a['title']}", f"{b['id']} {b['title']}", a["bounds"], b["bounds"]))
    return out


@pytest.mark.parametrize("folders", ["with files", "empty"])
@pytest.mark.parametrize("name", TEMPLATES)
def test_no_two_nodes_of_a_template_overlap(page, name, folders):
    """Checked as the frontend lays them out (its minimum sizes, the loaders' text included): with the test
    concepts present, and on a first start with empty folders, where the loaders' text is longest."""
    workflow = json.load(open(os.path.join(WORKFLOWS, name)))
    with empty_model_folders(page) if folders == "empty" else contextlib.nullcontext():
        nodes = page.evaluate(LOAD_TEMPLATE, workflow)
    assert overlaps(nodes) == [], overlaps(nodes)


# Draws a node's foreground on a real canvas and returns what was written where, with each text's width.
DRAWN = """(node) => {
    const ctx = document.createElement("canvas").getContext("2d");
    const drawn = [];
    const fillText = ctx.fillText.bind(ctx);
    ctx.fillText = (text, x, y) => { drawn.push([text, x, y, ctx.measureText(text).width, ctx.fillStyle]); fillText(text, x, y); };
    node.onDrawForeground(ctx);
    return drawn;
}"""


def test_loaders_show_where_files_go_while_their_folders_are_empty(page):
    with empty_model_folders(page) as folder:
        state = page.evaluate(f"""async () => {{
            {NEW_NODE}
            const drawn = {DRAWN};
            const load = newNode("PerfusionLoadConcept"), adapter = newNode("SubjectReferenceLoader");
            const combo = load.widgets.find(w => w.name === "concept_name");
            combo.value = "my_concept.safetensors"; combo.callback?.(combo.value);       // as a template opens
            for (let i = 0; i < 50 && !(load.perfusionLines ?? []).join().includes("No concept")
                                   || !(adapter.perfusionLines ?? []).length; i++)
                await new Promise(r => setTimeout(r, 100));
            return {{load: load.perfusionLines, adapter: adapter.perfusionLines, width: load.size[0],
                     drawnLoad: drawn(load), drawnAdapter: drawn(adapter), adapterWidth: adapter.size[0]}};
        }}""")
    load, adapter = " ".join(state["load"]), " ".join(state["adapter"])
    assert "No concept files in models/perfusion yet" in load and "Train Perfusion Concept" in load, load
    assert str(folder) in load and "undefined" not in load and "no file information" not in load, load
    assert "No adapter files yet" in adapter and "Train Subject Adapter" in adapter, adapter
    assert str(page.base / "models" / "ipadapter") in adapter and str(page.base / "models" / "subject_ref") in adapter
    for drawn, width in ((state["drawnLoad"], state["width"]), (state["drawnAdapter"], state["adapterWidth"])):
        assert len(drawn) > 1 and all(x + w <= width for _, x, _, w, _ in drawn), (drawn, width)   # wrapped
    page.screenshot(path=str(page.base / "empty_state.png"))
    # The files are back: "Refresh" finds them, and a template's missing file says so.
    lines = page.evaluate(f"""async () => {{
        const app = {APP};
        await app.refreshComboInNodes();
        const load = app.graph._nodes.filter(n => n.type === "PerfusionLoadConcept").at(-1);
        for (let i = 0; i < 50 && !(load.perfusionLines ?? []).join().includes("is not in"); i++)
            await new Promise(r => setTimeout(r, 100));
        return load.perfusionLines;
    }}""")
    assert '"my_concept.safetensors" is not in models/perfusion' in lines[0] and "2 concept files" in lines[0], lines


def test_a_long_error_wraps_inside_the_node(page):
    name = "a_concept_file_with_a_rather_long_name_that_is_not_a_safetensors_file.safetensors"
    (page.base / "models" / "perfusion" / name).write_bytes(b"\x80\x04.")
    try:
        state = page.evaluate(f"""async (name) => {{
            {NEW_NODE}
            const node = newNode("PerfusionLoadConcept");
            const combo = node.widgets.find(w => w.name === "concept_name");
            combo.value = name; combo.callback?.(name);
            for (let i = 0; i < 50 && !(node.perfusionLines ?? []).join().includes("⚠"); i++)
                await new Promise(r => setTimeout(r, 100));
            return {{lines: node.perfusionLines, drawn: ({DRAWN})(node), size: node.size, widgets: node.computeSize()[1]}};
        }}""", name)
    finally:
        (page.base / "models" / "perfusion" / name).unlink()
    assert state["lines"][0].startswith("⚠") and len(state["drawn"]) > 2, state
    assert all(x + w <= state["size"][0] for _, x, _, w, _ in state["drawn"]), state
    assert all(state["widgets"] < y <= state["size"][1] for _, _, y, _, _ in state["drawn"]), state   # below the widgets, inside


def family_chain_workflow():
    """Two checkpoint loaders, a LoRA loader between the first one and 'Load Rank-1 Concept' (sd1 concept)."""
    workflow = flag_workflow("fake_sd15.safetensors")
    checkpoint, load = workflow["nodes"]
    checkpoint["outputs"][0]["links"] = [1]
    second = json.loads(json.dumps(checkpoint))
    second.update(id=3, pos=[80, 320], widgets_values=["fake_sdxl.safetensors"])
    second["outputs"][0]["links"] = []
    lora = {"id": 4, "type": "LoraLoaderModelOnly", "pos": [440, 120], "size": [300, 90], "flags": {}, "order": 1,
            "mode": 0, "properties": {}, "widgets_values": ["none.safetensors", 1.0],
            "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
            "outputs": [{"name": "MODEL", "type": "MODEL", "links": [2]}]}
    load.update(pos=[800, 120])
    load["inputs"][0]["link"] = 2
    workflow.update(last_node_id=4, last_link_id=2, nodes=[checkpoint, load, second, lora],
                    links=[[1, 1, 0, 4, 0, "MODEL"], [2, 4, 0, 2, 0, "MODEL"]])
    return workflow


def test_the_family_warning_follows_upstream_changes(page):
    """Re-checked when the checkpoint upstream changes (its combo, or a value set without a callback,
    as undo does), and when a link further up is changed, through a LoRA loader."""
    steps = page.evaluate(f"""async (workflow) => {{
        const app = {APP};
        await app.loadGraphData(workflow);
        const byId = (id) => app.graph.getNodeById(id);
        const load = byId(2), first = byId(1), second = byId(3), lora = byId(4);
        const settle = async () => {{
            for (let i = 0; i < 8; i++) {{ app.canvas.setDirty(true, true); app.canvas.draw(true, true);
                                            await new Promise(r => setTimeout(r, 100)); }}
            return load.perfusionLines.some(l => l.includes("made for"));
        }};
        const out = [await settle()];
        const combo = first.widgets.find(w => w.name === "ckpt_name");
        combo.value = "fake_sdxl.safetensors"; combo.callback?.(combo.value);       // picked in the combo
        out.push(await settle());
        combo.value = "fake_sd15.safetensors";                                       // set without a callback
        out.push(await settle());
        second.connect(0, lora, 0);                                                  // the LoRA now reads the sdxl file
        out.push(await settle());
        first.connect(0, lora, 0);
        out.push(await settle());
        return out;
    }}""", family_chain_workflow())
    page.screenshot(path=str(page.base / "family_follows.png"))
    assert steps == [False, True, False, True, False], steps


@pytest.mark.parametrize("kind", ["PerfusionTrainConcept", "SubjectReferenceTrain"])
def test_both_trainers_draw_their_step_and_loss(page, kind):
    state = page.evaluate(f"""async (kind) => {{
        {NEW_NODE}
        const node = newNode(kind);
        window.comfyAPI.api.api.dispatchCustomEvent("perfusion.train", {{node: String(node.id), step: 3, steps: 2000, loss: 0.5}});
        await new Promise(r => setTimeout(r, 50));
        const drawn = ({DRAWN})(node);
        node.onExecuted?.({{text: ["done"]}});
        return {{drawn, after: ({DRAWN})(node), size: node.size}};
    }}""", kind)
    assert [d[0] for d in state["drawn"]] == ["step 3 / 2000 · loss 0.5000"], state
    assert state["after"] == []                                       # when done, the loss curve shows instead


def test_template_browser_shows_a_thumbnail_and_a_title_for_every_template(page):
    """Workflow > Browse Templates > ComfyUI-Perfusion: each card loads <template>.jpg (no 404) and is
    titled by the file name (the only title frontend 1.27.10 reads for a custom node's template)."""
    failed = []
    listener = lambda r: failed.append((r.status, r.url)) if r.status >= 400 and "workflow_templates" in r.url else None  # noqa: E731
    page.on("response", listener)
    # Each step waits for its condition and goes on as soon as it holds; the limits are generous because
    # on a loaded 2-core machine the dialog and its images can take well over 30 s to appear.
    limit = 180000
    try:
        page.evaluate(f"() => {APP}.extensionManager.command.execute('Comfy.BrowseTemplates')")
        group = page.get_by_text("ComfyUI-Perfusion", exact=True).first
        group.wait_for(state="visible", timeout=limit)
        group.click(timeout=limit)
        page.wait_for_function("""(n) => { const imgs = [...document.querySelectorAll('.template-card img')];
            return imgs.length >= n && imgs.every(i => i.currentSrc && i.complete); }""",    # loaded, or failed
                               arg=len(TEMPLATES), timeout=limit, polling=200)
        cards = page.evaluate("""() => [...document.querySelectorAll('.template-card')].map(c =>
            [c.querySelector('h3')?.innerText, c.querySelector('img')?.naturalWidth])""")
        page.screenshot(path=str(page.base / "template_browser.png"))
    finally:
        page.keyboard.press("Escape")
        page.remove_listener("response", listener)
    assert failed == []
    assert sorted(title for title, _ in cards) == sorted(t[:-5] for t in TEMPLATES), cards
    assert all(width >= 256 for _, width in cards), cards


MS_TEMPLATE = "Perfusion - MS-Diffusion Two Subjects and a Concept (SDXL).json"

# Shows encoder `id` of the loaded graph at zoom 1 near the top left and returns its box editor's state: the
# canvas element's page rectangle, the preview inside it (CSS px), what it drew, the node's box widgets.
EDITOR_STATE = f"""async (id) => {{
    const app = {APP};
    const node = app.graph.getNodeById(id);
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [-node.pos[0] + 60, -node.pos[1] + 60];
    for (let i = 0; i < 6; i++) {{ app.canvas.setDirty(true, true); app.canvas.draw(true, true);
                                   await new Promise(r => setTimeout(r, 120)); }}
    const editor = node.perfusionBoxEditor;
    const r = editor.canvas.getBoundingClientRect();
    const box = Object.fromEntries(["x", "y", "width", "height"].map(n => [n, node.widgets.find(w => w.name === n).value]));
    return {{rect: [r.left, r.top, r.width, r.height], css: [editor.canvas.clientWidth, editor.canvas.clientHeight],
             preview: editor.preview, drawn: editor.drawn, size: editor.size, box}};
}}"""


def _page_point(state, fx, fy):
    left, top, width, height = state["rect"]
    sx, sy = width / state["css"][0], height / state["css"][1]
    p = state["preview"]
    return left + (p["left"] + fx * p["width"]) * sx, top + (p["top"] + fy * p["height"]) * sy


def _drag(page, state, start, end, steps=8):
    page.mouse.move(*_page_point(state, *start))
    page.mouse.down()
    page.mouse.move(*_page_point(state, *end), steps=steps)
    page.mouse.up()


def test_box_editor_draws_moves_resizes_and_syncs_with_the_widgets(page):
    workflow = json.load(open(os.path.join(WORKFLOWS, MS_TEMPLATE)))
    page.evaluate(f"async (w) => {{ await {APP}.loadGraphData(w); }}", workflow)
    state = page.evaluate(EDITOR_STATE, 7)
    assert state["size"] == [1216, 832]                                          # the latent the chain samples on
    p = state["preview"]
    assert p["width"] / p["height"] == pytest.approx(1216 / 832, rel=0.02)
    drawn = {d["subject"]: d for d in state["drawn"]}
    assert set(drawn) == {1, 2} and drawn[1]["own"] and not drawn[2]["own"]       # both subjects in one view
    assert drawn[2]["x"] == pytest.approx(0.6) and drawn[1]["width"] == pytest.approx(0.4)
    page.screenshot(path=str(page.base / "box_editor_loaded.png"))
    # draw a new box on empty space (the bottom left): the widgets follow
    _drag(page, state, (0.05, 0.8), (0.35, 0.95))
    state = page.evaluate(EDITOR_STATE, 7)
    box = state["box"]
    assert (box["x"], box["y"]) == (pytest.approx(0.05, abs=0.015), pytest.approx(0.8, abs=0.015)), box
    assert (box["width"], box["height"]) == (pytest.approx(0.3, abs=0.02), pytest.approx(0.15, abs=0.02)), box
    # move it by dragging inside: same size, new place
    _drag(page, state, (0.2, 0.87), (0.4, 0.57))
    moved = page.evaluate(EDITOR_STATE, 7)["box"]
    assert moved["width"] == pytest.approx(box["width"], abs=0.011) and moved["height"] == pytest.approx(box["height"], abs=0.011)
    assert moved["x"] == pytest.approx(box["x"] + 0.2, abs=0.02) and moved["y"] == pytest.approx(box["y"] - 0.3, abs=0.02)
    # resize from its bottom-right corner
    state = page.evaluate(EDITOR_STATE, 7)
    corner = (moved["x"] + moved["width"], moved["y"] + moved["height"])
    _drag(page, state, corner, (0.9, 0.9))
    resized = page.evaluate(EDITOR_STATE, 7)
    assert resized["box"]["x"] == pytest.approx(moved["x"], abs=0.011)
    assert resized["box"]["x"] + resized["box"]["width"] == pytest.approx(0.9, abs=0.02)
    assert resized["box"]["y"] + resized["box"]["height"] == pytest.approx(0.9, abs=0.02)
    own = next(d for d in resized["drawn"] if d["own"])
    assert own["width"] == pytest.approx(resized["box"]["width"])                 # drawn as the widgets say
    page.screenshot(path=str(page.base / "box_editor_dragged.png"))
    # the other way round: a widget set in the node (as typing a value does) moves the drawn box, and the
    # other encoder's view shows subject 1's new box; the latent's size follows too
    state = page.evaluate(f"""async () => {{
        const app = {APP};
        const node = app.graph.getNodeById(7);
        const w = node.widgets.find(w => w.name === "x");
        w.value = 0.1; w.callback?.(0.1);
        const latent = app.graph.getNodeById(12);
        latent.widgets.find(w => w.name === "width").value = 832;
        latent.widgets.find(w => w.name === "height").value = 1216;
        return null;
    }}""")
    page.wait_for_timeout(400)
    state = page.evaluate(EDITOR_STATE, 8)
    first = next(d for d in state["drawn"] if d["subject"] == 1)
    assert first["x"] == pytest.approx(0.1) and not first["own"]
    assert state["size"] == [832, 1216] and state["preview"]["height"] > state["preview"]["width"]
    # saved in the workflow: the box widgets hold it; the editor adds nothing to widgets_values
    saved = page.evaluate(f"() => {APP}.graph.serialize().nodes.find(n => n.id === 7).widgets_values")
    assert saved[:4] == pytest.approx([0.1, resized["box"]["y"], resized["box"]["width"], resized["box"]["height"]], abs=1e-6)
    assert saved[7] == "dog" and len([v for v in saved if v is not None]) == 8, saved
