"""Host test in a real browser: Debian's chromium, driven headless by playwright (no browser download),
against the real ComfyUI server with this pack: the extension registers, the Gate Strength sliders
render and change their values, the example workflows load without missing nodes, a concept's file
info shows on its node; screenshots are saved."""

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
