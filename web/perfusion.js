// ComfyUI-Perfusion web extension: concept file info on "Load Rank-1 Concept" (with a flag when the
// checkpoint upstream is another model family), "preview on release" on "Gate Strength" (re-queues the
// prompt shortly after a slider stops moving: a gate change re-patches nothing, so this is cheap), and
// live step / loss on "Train Perfusion Concept".
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LOAD = "PerfusionLoadConcept";
const GATE = "PerfusionGateStrength";
const TRAIN = "PerfusionTrainConcept";
const GATE_SLIDERS = ["beta", "tau", "strength", "start_percent", "end_percent"];
const REQUEUE_DELAY_MS = 400;
const LINE = 15;

let concepts = new Map();
const families = new Map();

async function refreshConcepts() {
  try {
    const response = await api.fetchApi("/perfusion/concepts");
    if (response.ok) concepts = new Map((await response.json()).map((c) => [c.name, c]));
  } catch (error) {
    console.warn("Perfusion: could not read the concept list", error);
  }
}

function checkpointFamily(name) {
  if (!families.has(name)) {
    families.set(name, api.fetchApi(`/perfusion/checkpoint_family?name=${encodeURIComponent(name)}`)
      .then((r) => (r.ok ? r.json() : {})).catch(() => ({})));
  }
  return families.get(name);
}

function linkById(id) {
  const links = app.graph.links;
  return links?.get ? links.get(id) : links?.[id];
}

// The checkpoint a node's MODEL comes from, through pass-through nodes (LoRA loaders, other concepts).
function upstreamCheckpoint(node) {
  const seen = new Set();
  let current = node;
  while (current && !seen.has(current.id)) {
    seen.add(current.id);
    if (current.type === "CheckpointLoaderSimple") {
      return current.widgets?.find((w) => w.name === "ckpt_name")?.value ?? null;
    }
    const input = current.inputs?.find((i) => i.type === "MODEL");
    if (!input || input.link == null) return null;
    const link = linkById(input.link);
    current = link ? app.graph.getNodeById(link.origin_id) : null;
  }
  return null;
}

function describe(info) {
  if (!info) return ["no file information"];
  if (info.error) return [`⚠ ${info.error}`];
  const parts = [info.model, info.size ? `${Math.round(info.size / 1024)} KB` : null,
    info.steps ? `${info.steps} steps` : null, info.date ? info.date.slice(0, 10) : null].filter(Boolean);
  return [`trigger "${info.trigger}" · superclass "${info.superclass}"`, parts.join(" · ")];
}

function setLines(node, lines, warning) {
  node.perfusionLines = lines;
  node.perfusionWarning = warning;
  const needed = node.computeSize()[1] + lines.length * LINE + 6;
  if (node.size[1] < needed) node.setSize([node.size[0], needed]);
  node.setDirtyCanvas(true, true);
}

// Creation, connections and the combo each start an update; they await fetches and may finish in any
// order, so only the newest one (which saw the newest graph) may publish its result.
async function updateLoadNode(node) {
  const ticket = (node.perfusionTicket = (node.perfusionTicket ?? 0) + 1);
  const name = node.widgets?.find((w) => w.name === "concept_name")?.value;
  if (!concepts.has(name)) await refreshConcepts();
  const info = concepts.get(name);
  const lines = describe(info);
  let warning = Boolean(info?.error);
  const checkpoint = upstreamCheckpoint(node);
  if (info && !info.error && checkpoint) {
    const found = await checkpointFamily(checkpoint);
    if (found.family && found.family !== info.model) {
      lines.push(`⚠ made for ${info.model}; ${checkpoint} is ${found.family}`);
      warning = true;
    }
  }
  if (ticket === node.perfusionTicket) setLines(node, lines, warning);
}

function drawLines(node, ctx) {
  if (node.flags?.collapsed || !node.perfusionLines?.length) return;
  ctx.save();
  ctx.font = "12px sans-serif";
  ctx.fillStyle = node.perfusionWarning ? "#ff8a80" : "#9aa0a6";
  const top = node.size[1] - node.perfusionLines.length * LINE - 2;
  node.perfusionLines.forEach((line, i) => ctx.fillText(line, 10, top + i * LINE + 10));
  ctx.restore();
}

function chain(prototype, method, after) {
  const original = prototype[method];
  prototype[method] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

function wrapCallback(widget, after) {
  const original = widget.callback;
  widget.callback = function (...args) {
    const result = original?.apply(this, args);
    after(...args);
    return result;
  };
}

app.registerExtension({
  name: "perfusion.ui",

  async setup() {
    await refreshConcepts();
    api.addEventListener("perfusion.train", ({ detail }) => {
      const node = detail?.node != null ? app.graph.getNodeById(Number(detail.node)) ?? app.graph.getNodeById(detail.node) : null;
      if (!node) return;
      setLines(node, [`step ${detail.step} / ${detail.steps} · loss ${Number(detail.loss).toFixed(4)}`], false);
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === LOAD) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        const combo = this.widgets?.find((w) => w.name === "concept_name");
        if (combo) wrapCallback(combo, () => updateLoadNode(this));
        setTimeout(() => updateLoadNode(this), 0);
      });
      chain(nodeType.prototype, "onConfigure", function () { setTimeout(() => updateLoadNode(this), 0); });
      chain(nodeType.prototype, "onConnectionsChange", function () { setTimeout(() => updateLoadNode(this), 0); });
      chain(nodeType.prototype, "onDrawForeground", function (ctx) { drawLines(this, ctx); });
    }
    if (nodeData.name === GATE) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        this.properties = this.properties ?? {};
        const toggle = this.addWidget("toggle", "preview on release", Boolean(this.properties.perfusionPreview),
          (value) => { this.properties.perfusionPreview = value; }, { on: "on", off: "off", serialize: false });
        toggle.serialize = false;              // a UI preference, not an input of the node
        for (const widget of this.widgets ?? []) {
          if (GATE_SLIDERS.includes(widget.name)) wrapCallback(widget, () => this.perfusionRequeue());
        }
      });
      chain(nodeType.prototype, "onConfigure", function () {
        const toggle = this.widgets?.find((w) => w.name === "preview on release");
        if (toggle) toggle.value = Boolean(this.properties?.perfusionPreview);
      });
      nodeType.prototype.perfusionRequeue = function () {
        if (!this.properties?.perfusionPreview) return;
        clearTimeout(this.perfusionTimer);
        this.perfusionTimer = setTimeout(() => app.queuePrompt(0, 1), REQUEUE_DELAY_MS);
      };
    }
    if (nodeData.name === TRAIN) {
      chain(nodeType.prototype, "onDrawForeground", function (ctx) { drawLines(this, ctx); });
      chain(nodeType.prototype, "onExecuted", function () { this.perfusionLines = []; });
    }
  },
});
