// ComfyUI-Perfusion web extension: concept file info on "Load Rank-1 Concept" (with a flag when the
// checkpoint upstream is another model family, kept up to date when that checkpoint or the links change),
// an empty state on the two loaders when their folder has no files yet, "preview on release" on
// "Gate Strength" (re-queues the prompt shortly after a slider stops moving: a gate change re-patches
// nothing, so this is cheap), and live step / loss on both trainers.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LOAD = "PerfusionLoadConcept";
const ADAPTER = "SubjectReferenceLoader";
const GATE = "PerfusionGateStrength";
const TRAINERS = ["PerfusionTrainConcept", "SubjectReferenceTrain"];
const GATE_SLIDERS = ["beta", "tau", "strength", "start_percent", "end_percent"];
const REQUEUE_DELAY_MS = 400;
const LINE = 15;
const FONT = "12px sans-serif";
const PAD = 10;
const COLORS = { info: "#9aa0a6", notice: "#e8c16a", warning: "#ff8a80" };

let concepts = new Map();
let folders = {};
let adapters = [];
const families = new Map();

async function getJson(path, fallback) {
  try {
    const response = await api.fetchApi(path, { cache: "no-store" });
    return response.ok ? await response.json() : fallback;
  } catch (error) {
    console.warn(`Perfusion: could not read ${path}`, error);
    return fallback;
  }
}

async function refreshConcepts() {
  const [list, found] = await Promise.all([getJson("/perfusion/concepts", null), getJson("/perfusion/folders", null)]);
  if (list) concepts = new Map(list.map((c) => [c.name, c]));
  if (found) folders = found;
}

async function refreshAdapters() {
  const [info, found] = await Promise.all([getJson(`/object_info/${ADAPTER}`, null), getJson("/perfusion/folders", null)]);
  const names = info?.[ADAPTER]?.input?.required?.adapter_name?.[0];
  if (Array.isArray(names)) adapters = names;
  if (found) folders = found;
}

function folderOf(kind) {
  return folders[kind]?.paths?.[0] ?? `models/${kind}`;
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

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

// The checkpoint a node's MODEL comes from, through pass-through nodes (LoRA loaders, other concepts):
// the first node upstream with a ckpt_name widget (Load Checkpoint and its variants).
function upstreamCheckpoint(node) {
  const seen = new Set();
  let current = node;
  while (current && !seen.has(current.id)) {
    seen.add(current.id);
    if (current !== node && current.widgets?.some((w) => w.name === "ckpt_name")) {
      return widgetValue(current, "ckpt_name") ?? null;
    }
    const input = current.inputs?.find((i) => i.type === "MODEL");
    if (!input || input.link == null) return null;
    const link = linkById(input.link);
    current = link ? app.graph.getNodeById(link.origin_id) : null;
  }
  return null;
}

function describe(name, info) {
  if (!concepts.size) {
    return [[`No concept files in models/perfusion yet: train one with Train Perfusion Concept, or copy .safetensors concept files to ${folderOf("perfusion")}`], "notice"];
  }
  if (!info) {
    return [[`"${name ?? ""}" is not in models/perfusion: pick one of the ${concepts.size} concept files above`], "notice"];
  }
  if (info.error) return [[`⚠ ${info.error}`], "warning"];
  const parts = [info.model, info.size ? `${Math.round(info.size / 1024)} KB` : null,
    info.steps ? `${info.steps} steps` : null, info.date ? info.date.slice(0, 10) : null].filter(Boolean);
  return [[`trigger "${info.trigger}" · superclass "${info.superclass}"`, parts.join(" · ")], "info"];
}

function setLines(node, lines, level) {
  node.perfusionLines = lines;
  node.perfusionLevel = level;
  node.perfusionWarning = level === "warning";
  fitLines(node);
  node.setDirtyCanvas(true, true);
}

let measure = null;
function wrap(lines, width) {
  measure = measure ?? document.createElement("canvas").getContext("2d");
  measure.font = FONT;
  const out = [];
  for (const line of lines) {
    let current = "";
    for (const word of String(line).split(/\s+/).filter(Boolean)) {
      let piece = word;
      while (measure.measureText(piece).width > width && piece.length > 1) {   // a path or a long name
        let cut = piece.length - 1;
        while (cut > 1 && measure.measureText(piece.slice(0, cut)).width > width) cut--;
        const separator = Math.max(...["/", "\\", "_", "-", "."].map((c) => piece.lastIndexOf(c, cut - 1)));
        if (separator >= cut / 2) cut = separator + 1;                          // after a "/" where one is near
        if (current) { out.push(current); current = ""; }
        out.push(piece.slice(0, cut));
        piece = piece.slice(cut);
      }
      const candidate = current ? `${current} ${piece}` : piece;
      if (current && measure.measureText(candidate).width > width) {
        out.push(current);
        current = piece;
      } else {
        current = candidate;
      }
    }
    out.push(current);
  }
  return out;
}

// The text wraps to the node's width, and the node grows to hold it.
function fitLines(node) {
  const lines = node.perfusionLines ?? [];
  node.perfusionWrapped = wrap(lines, Math.max(40, node.size[0] - 2 * PAD));
  node.perfusionWrappedFor = [lines, node.size[0]];
  if (!lines.length) return;
  const needed = node.computeSize()[1] + node.perfusionWrapped.length * LINE + 6;
  if (node.size[1] < needed) node.setSize([node.size[0], needed]);
}

// Creation, connections, the combo, the upstream checkpoint each start an update; they await fetches
// and may finish in any order, so only the newest one (which saw the newest graph) may publish its result.
async function updateLoadNode(node) {
  const ticket = (node.perfusionTicket = (node.perfusionTicket ?? 0) + 1);
  const name = widgetValue(node, "concept_name");
  const checkpoint = upstreamCheckpoint(node);
  node.perfusionChecked = `${name}\n${checkpoint}`;
  if (!concepts.has(name)) await refreshConcepts();
  const info = concepts.get(name);
  const [lines, described] = describe(name, info);
  let level = described;
  if (info && !info.error && checkpoint) {
    const found = await checkpointFamily(checkpoint);
    if (found.family && found.family !== info.model) {
      lines.push(`⚠ made for ${info.model}; ${checkpoint} is ${found.family}`);
      level = "warning";
    }
  }
  if (ticket === node.perfusionTicket) setLines(node, lines, level);
}

async function updateAdapterNode(node) {
  const ticket = (node.perfusionTicket = (node.perfusionTicket ?? 0) + 1);
  const name = widgetValue(node, "adapter_name");
  node.perfusionChecked = `${name}`;
  if (!adapters.includes(name)) await refreshAdapters();
  let lines = [];
  if (!adapters.length) {
    lines = [`No adapter files yet: put IP-Adapter files (e.g. ip-adapter-plus_sd15.safetensors) in ${folderOf("ipadapter")}, ` +
             `or train one with Train Subject Adapter (it saves to ${folderOf("subject_ref")})`];
  } else if (!adapters.includes(name)) {
    lines = [`"${name ?? ""}" is not in models/ipadapter or models/subject_ref: pick one of the ${adapters.length} adapter files above`];
  }
  if (ticket === node.perfusionTicket) setLines(node, lines, "notice");
}

// Called on every draw: re-checks when what the text depends on has changed, however it changed
// (a combo upstream, a link anywhere between, undo), and re-wraps after a resize.
function drawLines(node, ctx, signature, update) {
  if (signature != null && signature !== node.perfusionChecked) update(node);
  if (node.flags?.collapsed || !node.perfusionLines?.length) return;
  const [lines, width] = node.perfusionWrappedFor ?? [];
  if (lines !== node.perfusionLines || width !== node.size[0]) fitLines(node);
  ctx.save();
  ctx.font = FONT;
  ctx.fillStyle = COLORS[node.perfusionLevel] ?? COLORS.info;
  const wrapped = node.perfusionWrapped;
  const top = node.size[1] - wrapped.length * LINE - 2;
  wrapped.forEach((line, i) => ctx.fillText(line, PAD, top + i * LINE + 10));
  ctx.restore();
}

function loadSignature(node) {
  return `${widgetValue(node, "concept_name")}\n${upstreamCheckpoint(node)}`;
}

function updateAllLoadNodes() {
  for (const node of app.graph?._nodes ?? []) if (node.type === LOAD) updateLoadNode(node);
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

function watchLoader(nodeType, widgetName, update, signature) {
  chain(nodeType.prototype, "onNodeCreated", function () {
    const combo = this.widgets?.find((w) => w.name === widgetName);
    if (combo) wrapCallback(combo, () => update(this));
    setTimeout(() => update(this), 0);
  });
  chain(nodeType.prototype, "onConfigure", function () { setTimeout(() => update(this), 0); });
  chain(nodeType.prototype, "onConnectionsChange", function () { setTimeout(() => update(this), 0); });
  chain(nodeType.prototype, "onDrawForeground", function (ctx) { drawLines(this, ctx, signature(this), update); });
}

app.registerExtension({
  name: "perfusion.ui",

  async setup() {
    await refreshConcepts();
    api.addEventListener("perfusion.train", ({ detail }) => {
      const node = detail?.node != null ? app.graph.getNodeById(Number(detail.node)) ?? app.graph.getNodeById(detail.node) : null;
      if (!node) return;
      setLines(node, [`step ${detail.step} / ${detail.steps} · loss ${Number(detail.loss).toFixed(4)}`], "info");
    });
  },

  // "Refresh" (R): files copied in since are found, and every loader's text follows.
  async refreshComboInNodes() {
    await Promise.all([refreshConcepts(), refreshAdapters()]);
    for (const node of app.graph?._nodes ?? []) {
      if (node.type === LOAD) updateLoadNode(node);
      if (node.type === ADAPTER) updateAdapterNode(node);
    }
  },

  // Any node with a checkpoint combo: a new checkpoint re-checks the concepts' family right away.
  nodeCreated(node) {
    const combo = node.widgets?.find((w) => w.name === "ckpt_name");
    if (combo) wrapCallback(combo, () => updateAllLoadNodes());
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === LOAD) watchLoader(nodeType, "concept_name", updateLoadNode, loadSignature);
    if (nodeData.name === ADAPTER) watchLoader(nodeType, "adapter_name", updateAdapterNode, (node) => `${widgetValue(node, "adapter_name")}`);
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
    if (TRAINERS.includes(nodeData.name)) {
      chain(nodeType.prototype, "onDrawForeground", function (ctx) { drawLines(this, ctx, null, null); });
      chain(nodeType.prototype, "onExecuted", function () { this.perfusionLines = []; });   // the loss curve shows
    }
  },
});
