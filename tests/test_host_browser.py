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
        const app = {APP};
        const LiteGraph = window.LiteGraph ?? window.comfyAPI.litegraph?.LiteGraph;
        const node = LiteGraph.createNode("PerfusionGateStrength");
        app.graph.add(node);
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
        const app = {APP};
        const LiteGraph = window.LiteGraph ?? window.comfyAPI.litegraph?.LiteGraph;
        const node = LiteGraph.createNode("PerfusionLoadConcept");
        app.graph.add(node);
        const combo = node.widgets.find(w => w.name === "concept_name");
        combo.value = "test_sks.safetensors"; combo.callback?.(combo.value);
        for (let i = 0; i < 50 && !(node.perfusionLines ?? []).join().includes("sks"); i++)
            await new Promise(r => setTimeout(r, 100));
        app.canvas.setDirty(true, true);
        return node.perfusionLines;
    }}""")
    assert lines and 'trigger "sks"' in lines[0] and "sd1" in lines[1], lines
    page.screenshot(path=str(page.base / "load_concept.png"))
