// ComfyUI-Perfusion web extension: a box editor on every "Subject Reference Encoder" (all backends). A small
// preview with the aspect ratio of the latent the subjects are sampled on shows this subject's box (drag inside
// to move it, drag a corner to resize, drag on empty space to draw a new one) and, outlined, the boxes of the
// other subjects in the same chain. It is synced both ways with the x / y / width / height widgets, which are
// what the workflow saves and what the node reads: the editor itself stores nothing.
import { app } from "../../scripts/app.js";

const ENCODER = "SubjectReferenceEncoder";
const WIDGET = "box editor";
const HEIGHT = 170;
const PAD = 8;
const HANDLE = 7;               // px: a corner within this distance resizes
const STEP = 0.01;              // the widgets' step
const COLORS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#4db6ac", "#f06292"];
const BOX = ["x", "y", "width", "height"];
const SEARCH_LIMIT = 400;       // nodes visited when looking for the latent

function linkById(id) {
  const links = app.graph?.links;
  return links?.get ? links.get(id) : links?.[id];
}

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function boxOf(node) {
  const [x, y, width, height] = BOX.map((name) => Number(widget(node, name)?.value ?? 0));
  return { x, y, width, height };
}

const round = (v) => Math.round(v / STEP) * STEP;
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

function setBox(node, box) {
  const values = {
    x: clamp(round(box.x), 0, 1), y: clamp(round(box.y), 0, 1),
  };
  values.width = clamp(round(box.width), 0, Number((1 - values.x).toFixed(2)));
  values.height = clamp(round(box.height), 0, Number((1 - values.y).toFixed(2)));
  for (const name of BOX) {
    const w = widget(node, name);
    if (!w) continue;
    const value = Number(values[name].toFixed(2));
    if (w.value !== value) {
      w.value = value;
      w.callback?.(value, app.canvas, node);
    }
  }
  node.setDirtyCanvas(true, true);
}

function upstreamEncoder(node) {
  const input = node.inputs?.find((i) => i.name === "subjects");
  const link = input?.link != null ? linkById(input.link) : null;
  const source = link ? app.graph.getNodeById(link.origin_id) : null;
  return source?.type === ENCODER ? source : null;
}

function downstreamEncoders(node) {
  const out = [];
  for (const output of node.outputs ?? []) {
    for (const id of output.links ?? []) {
      const target = app.graph.getNodeById(linkById(id)?.target_id);
      if (target?.type === ENCODER) out.push(target);
    }
  }
  return out;
}

// Every encoder of this node's chain, in order (subject 1 first); branches after this node included.
function chainOf(node) {
  let first = node;
  const seen = new Set([node.id]);
  for (let up = upstreamEncoder(first); up && !seen.has(up.id); up = upstreamEncoder(first)) {
    seen.add(up.id);
    first = up;
  }
  const chain = [];
  const queue = [first];
  const visited = new Set();
  while (queue.length && chain.length < 64) {
    const current = queue.shift();
    if (visited.has(current.id)) continue;
    visited.add(current.id);
    chain.push(current);
    queue.push(...downstreamEncoders(current));
  }
  return chain;
}

function sizeOf(node) {
  const width = Number(widget(node, "width")?.value);
  const height = Number(widget(node, "height")?.value);
  return width > 0 && height > 0 && node.outputs?.some((o) => o.type === "LATENT") ? [width, height] : null;
}

// The latent the subjects are sampled on: downstream of the encoder (through Apply and other MODEL nodes) to a
// node with a LATENT input (KSampler, SamplerCustom...), then upstream from that input to a node with width and
// height widgets (Empty Latent Image and its kin). Else any such node in the graph; else a square.
function latentSize(node) {
  const visited = new Set();
  const queue = [node];
  while (queue.length && visited.size < SEARCH_LIMIT) {
    const current = queue.shift();
    if (!current || visited.has(current.id)) continue;
    visited.add(current.id);
    const latentInput = current.inputs?.find((i) => i.type === "LATENT" && i.link != null);
    if (latentInput && current !== node) {
      let source = app.graph.getNodeById(linkById(latentInput.link)?.origin_id);
      for (let depth = 0; source && depth < 16; depth++) {
        const size = sizeOf(source);
        if (size) return size;
        const up = source.inputs?.find((i) => i.type === "LATENT" && i.link != null);
        source = up ? app.graph.getNodeById(linkById(up.link)?.origin_id) : null;
      }
    }
    for (const output of current.outputs ?? []) {
      for (const id of output.links ?? []) queue.push(app.graph.getNodeById(linkById(id)?.target_id));
    }
  }
  for (const other of app.graph?._nodes ?? []) {
    const size = sizeOf(other);
    if (size) return size;
  }
  return [1, 1];
}

function layout(editor, aspect) {
  const width = Math.max(40, editor.canvas.clientWidth);
  const height = Math.max(40, editor.canvas.clientHeight);
  let w = width - 2 * PAD;
  let h = w / aspect;
  if (h > height - 2 * PAD - 14) {
    h = height - 2 * PAD - 14;
    w = h * aspect;
  }
  return { left: (width - w) / 2, top: PAD, width: w, height: h };
}

function draw(node) {
  const editor = node.perfusionBoxEditor;
  if (!editor) return;
  const canvas = editor.canvas;
  const ratio = window.devicePixelRatio || 1;
  const cssW = Math.max(40, canvas.clientWidth), cssH = Math.max(40, canvas.clientHeight);
  if (canvas.width !== Math.round(cssW * ratio) || canvas.height !== Math.round(cssH * ratio)) {
    canvas.width = Math.round(cssW * ratio);
    canvas.height = Math.round(cssH * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const [lw, lh] = editor.size;
  const preview = layout(editor, lw / lh);
  editor.preview = preview;
  ctx.fillStyle = "#1b1b1f";
  ctx.fillRect(preview.left, preview.top, preview.width, preview.height);
  ctx.strokeStyle = "#666";
  ctx.lineWidth = 1;
  ctx.strokeRect(preview.left + 0.5, preview.top + 0.5, preview.width - 1, preview.height - 1);
  const drawn = [];
  const chain = editor.chain;
  chain.forEach((other, index) => {
    const box = boxOf(other);
    const own = other === node;
    const auto = box.width === 0 && box.height === 0;
    const shown = auto ? { x: 0, y: 0, width: 1, height: 1 } : box;
    const r = [preview.left + shown.x * preview.width, preview.top + shown.y * preview.height,
      shown.width * preview.width, shown.height * preview.height];
    const color = COLORS[index % COLORS.length];
    ctx.save();
    ctx.strokeStyle = color;
    ctx.lineWidth = own ? 2 : 1;
    if (auto) ctx.setLineDash([4, 3]);
    if (own) {
      ctx.fillStyle = color + "40";
      ctx.fillRect(...r);
    }
    ctx.strokeRect(r[0] + 0.5, r[1] + 0.5, Math.max(0, r[2] - 1), Math.max(0, r[3] - 1));
    ctx.fillStyle = color;
    ctx.font = "11px sans-serif";
    ctx.fillText(`${index + 1}${auto ? " (mask's box)" : ""}`, r[0] + 3, r[1] + 12);
    if (own && !auto) {
      for (const [cx, cy] of [[r[0], r[1]], [r[0] + r[2], r[1]], [r[0], r[1] + r[3]], [r[0] + r[2], r[1] + r[3]]]) {
        ctx.fillRect(cx - 3, cy - 3, 6, 6);
      }
    }
    ctx.restore();
    drawn.push({ subject: index + 1, own, auto, ...box });
  });
  ctx.fillStyle = "#9aa0a6";
  ctx.font = "11px sans-serif";
  ctx.fillText(`latent ${lw} x ${lh} · drag to draw, move or resize`, preview.left, preview.top + preview.height + 12);
  editor.drawn = drawn;
}

function signature(node, editor) {
  const parts = [editor.size.join("x"), editor.canvas.clientWidth, editor.canvas.clientHeight];
  for (const other of editor.chain) parts.push(other.id, ...BOX.map((name) => widget(other, name)?.value));
  return parts.join(",");
}

// Re-reads the chain and the latent (at most every 250 ms: a graph walk) and redraws when anything changed.
function refresh(node, force = false) {
  const editor = node.perfusionBoxEditor;
  if (!editor || !app.graph) return;
  const now = performance.now();
  if (force || now - (editor.checkedAt ?? 0) > 250) {
    editor.checkedAt = now;
    editor.chain = chainOf(node);
    editor.size = latentSize(node);
  }
  const sig = signature(node, editor);
  if (force || sig !== editor.signature) {
    editor.signature = sig;
    draw(node);
  }
}

function toFraction(editor, event) {
  const rect = editor.canvas.getBoundingClientRect();
  const scaleX = rect.width / Math.max(1, editor.canvas.clientWidth);
  const scaleY = rect.height / Math.max(1, editor.canvas.clientHeight);
  const px = (event.clientX - rect.left) / scaleX, py = (event.clientY - rect.top) / scaleY;
  const p = editor.preview;
  return { fx: (px - p.left) / p.width, fy: (py - p.top) / p.height, px, py };
}

function startDrag(node, event) {
  const editor = node.perfusionBoxEditor;
  if (event.button !== 0 || !editor.preview) return;
  event.preventDefault();
  event.stopPropagation();
  refresh(node, true);
  const { fx, fy, px, py } = toFraction(editor, event);
  const box = boxOf(node);
  const p = editor.preview;
  const corners = [[box.x, box.y], [box.x + box.width, box.y], [box.x, box.y + box.height], [box.x + box.width, box.y + box.height]];
  const hasBox = box.width > 0 && box.height > 0;
  const near = hasBox ? corners.findIndex(([cx, cy]) =>
    Math.abs(p.left + cx * p.width - px) <= HANDLE && Math.abs(p.top + cy * p.height - py) <= HANDLE) : -1;
  if (near >= 0) {
    const [ax, ay] = corners[3 - near];                      // the opposite corner stays
    editor.drag = { mode: "draw", ax, ay };
  } else if (hasBox && fx >= box.x && fx <= box.x + box.width && fy >= box.y && fy <= box.y + box.height) {
    editor.drag = { mode: "move", dx: fx - box.x, dy: fy - box.y, width: box.width, height: box.height };
  } else if (fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1) {
    editor.drag = { mode: "draw", ax: clamp(fx, 0, 1), ay: clamp(fy, 0, 1), fresh: true };
  } else {
    return;
  }
  editor.canvas.setPointerCapture?.(event.pointerId);
}

function moveDrag(node, event) {
  const editor = node.perfusionBoxEditor;
  const drag = editor?.drag;
  if (!drag) return;
  event.preventDefault();
  event.stopPropagation();
  const { fx, fy } = toFraction(editor, event);
  if (drag.mode === "move") {
    setBox(node, { x: clamp(fx - drag.dx, 0, 1 - drag.width), y: clamp(fy - drag.dy, 0, 1 - drag.height),
      width: drag.width, height: drag.height });
  } else {
    const bx = clamp(fx, 0, 1), by = clamp(fy, 0, 1);
    const box = { x: Math.min(drag.ax, bx), y: Math.min(drag.ay, by),
      width: Math.abs(bx - drag.ax), height: Math.abs(by - drag.ay) };
    if (!drag.fresh || (box.width >= 0.02 && box.height >= 0.02)) setBox(node, box);   // a click draws nothing
  }
  refresh(node, true);
}

function endDrag(node, event) {
  const editor = node.perfusionBoxEditor;
  if (!editor?.drag) return;
  moveDrag(node, event);
  editor.drag = null;
  editor.canvas.releasePointerCapture?.(event.pointerId);
}

function addEditor(node) {
  const container = document.createElement("div");
  container.className = "perfusion-box-editor";
  container.style.cssText = `width: 100%; height: ${HEIGHT}px; box-sizing: border-box;`;
  const canvas = document.createElement("canvas");
  canvas.style.cssText = "width: 100%; height: 100%; display: block; cursor: crosshair; touch-action: none;";
  container.append(canvas);
  node.perfusionBoxEditor = { canvas, container, chain: [node], size: [1, 1] };
  canvas.addEventListener("pointerdown", (e) => startDrag(node, e));
  canvas.addEventListener("pointermove", (e) => moveDrag(node, e));
  canvas.addEventListener("pointerup", (e) => endDrag(node, e));
  canvas.addEventListener("pointercancel", (e) => endDrag(node, e));
  const editorWidget = node.addDOMWidget(WIDGET, "perfusion_boxes", container, {
    hideOnZoom: false,
    getMinHeight: () => HEIGHT,
    getMaxHeight: () => HEIGHT,
    getValue: () => "",
    setValue: () => {},
    onDraw: () => refresh(node),
  });
  editorWidget.serialize = false;                  // the box lives in the x / y / width / height widgets
  for (const name of BOX) {
    const w = widget(node, name);
    const original = w?.callback;
    if (w) w.callback = function (...args) { const r = original?.apply(this, args); refresh(node, true); return r; };
  }
}

app.registerExtension({
  name: "perfusion.subject_boxes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== ENCODER) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = created?.apply(this, args);
      addEditor(this);
      return result;
    };
    const configured = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (...args) {
      const result = configured?.apply(this, args);
      setTimeout(() => refresh(this, true), 0);
      return result;
    };
  },
});
