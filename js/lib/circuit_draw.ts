// Drawing the circuit view's graph on a 2D canvas (the view state comes in; nothing here reads the model).
// Edges are bucketed by sign and width so that each bucket is one path (a 10,000-edge graph is a few strokes);
// token and logit text is canvas text, inert.
import type { Graph, Visible } from "./circuit_graph";
import { KIND } from "./circuit_graph";
import { visibleText } from "./format";

/** Colours of the view (read from the theme's CSS variables by the view). */
export interface CircuitColors {
  pos: string;
  neg: string;
  fg: string;
  muted: string;
  accent: string;
  bg: string;
}

/** The colours before the theme is read (a view drawn before it is attached). */
export function defaultColors(): CircuitColors {
  return { pos: "#1f77b4", neg: "#d62728", fg: "#333", muted: "#888", accent: "#1976d2", bg: "#fff" };
}

/**
 * The theme's colours into `colors`, read at every frame: the view may be drawn before it is attached, and the
 * user may switch between light and dark themes while it is shown.
 */
export function readThemeColors(el: HTMLElement, colors: CircuitColors): void {
  if (!el.isConnected) return;
  const s = getComputedStyle(el);
  const v = (name: string, fallback: string) => s.getPropertyValue(name).trim() || fallback;
  colors.pos = v("--gs-ct-pos", colors.pos);
  colors.neg = v("--gs-ct-neg", colors.neg);
  colors.fg = s.color || v("--jp-ui-font-color1", colors.fg);
  colors.muted = v("--gs-ct-muted", colors.muted);
  colors.accent = v("--gs-ct-accent", colors.accent);
  colors.bg = v("--gs-ct-bg", colors.bg);
}

/** What one frame needs besides the graph: the view transform, the canvas size in CSS px, and the marks. */
export interface DrawState {
  kx: number; // world -> screen: x * kx + tx, y * ky + ty
  ky: number;
  tx: number;
  ty: number;
  w: number;
  h: number;
  focus: number; // local index of the clicked node, -1 for none
  hover: number; // local index of the hovered node, -1 for none
  highlight: Set<number>; // edges drawn strong around the focus
  neighbours: Set<number>; // local nodes at the ends of the highlighted edges
  pinned: Set<number>; // graph node indices
  selected: Set<number>; // graph node indices
  colors: CircuitColors;
  hidden?: Uint8Array; // local nodes a drawn supernode stands in for: neither they nor their edges are drawn
  isolate?: number; // local index of the hovered node whose edges alone are drawn, -1 for none
}

/** What a frame drew: edges and node labels (the browser tests read them). */
export interface Drawn {
  edges: number;
  labels: number;
}

/** Zoom (screen px per world px) from which feature and error nodes carry their labels. */
export const LABEL_ZOOM = 2;

/**
 * Draw one frame: edges (only the hovered node's while one is hovered), nodes with their marks, node labels once
 * zoomed in to LABEL_ZOOM, token and logit text, row labels.
 */
export function drawGraph(ctx: CanvasRenderingContext2D, g: Graph, visible: Visible, v: DrawState): Drawn {
  const { w, h } = v;
  const sx = (x: number) => x * v.kx + v.tx;
  const sy = (y: number) => y * v.ky + v.ty;
  ctx.font = "11px sans-serif"; // canvas fonts take no CSS variables

  // Edges, bucketed by sign and width so each bucket is one path.
  const edges = visible.edges;
  const hidden = v.hidden;
  const isolate = v.isolate ?? -1;
  const dim = v.focus >= 0 || isolate >= 0;
  let drawnEdges = 0;
  const buckets = 4;
  for (let sign = 0; sign < 2; sign++) {
    for (let b = 0; b < buckets; b++) {
      ctx.beginPath();
      let any = false;
      for (let j = 0; j < edges.length; j++) {
        const e = edges[j];
        const wgt = g.weight[e];
        if ((wgt >= 0 ? 0 : 1) !== sign) continue;
        const rel = g.maxWeight > 0 ? Math.abs(wgt) / g.maxWeight : 0;
        const bucket = Math.min(buckets - 1, Math.floor(Math.sqrt(rel) * buckets));
        if (bucket !== b) continue;
        const s = g.src[e];
        const d = g.dst[e];
        if (hidden && (hidden[s] || hidden[d])) continue;
        if (isolate >= 0 && s !== isolate && d !== isolate) continue;
        const x1 = sx(g.x[s]);
        const y1 = sy(g.y[s]);
        const x2 = sx(g.x[d]);
        const y2 = sy(g.y[d]);
        if ((x1 < 0 && x2 < 0) || (x1 > w && x2 > w) || (y1 < 0 && y2 < 0) || (y1 > h && y2 > h)) continue;
        ctx.moveTo(x1, y1);
        ctx.lineTo(x2, y2);
        any = true;
        drawnEdges++;
      }
      if (!any) continue;
      ctx.strokeStyle = sign === 0 ? v.colors.pos : v.colors.neg;
      ctx.globalAlpha = isolate >= 0 ? 0.5 + 0.5 * (b / (buckets - 1))
        : (dim ? 0.12 : 0.25) + (dim ? 0.1 : 0.5) * (b / (buckets - 1));
      ctx.lineWidth = 0.6 + 2.4 * (b / (buckets - 1));
      ctx.stroke();
    }
  }
  ctx.globalAlpha = 1;
  if (v.highlight.size) {
    for (const e of v.highlight) {
      if (hidden && (hidden[g.src[e]] || hidden[g.dst[e]])) continue;
      ctx.beginPath();
      ctx.moveTo(sx(g.x[g.src[e]]), sy(g.y[g.src[e]]));
      ctx.lineTo(sx(g.x[g.dst[e]]), sy(g.y[g.dst[e]]));
      ctx.strokeStyle = g.weight[e] >= 0 ? v.colors.pos : v.colors.neg;
      ctx.lineWidth = 1.5 + 3 * (g.maxWeight > 0 ? Math.sqrt(Math.abs(g.weight[e]) / g.maxWeight) : 0);
      ctx.stroke();
    }
  }

  // Nodes.
  const { pinned, selected } = v;
  for (let i = 0; i < g.count; i++) {
    if (!visible.nodes[i] || hidden?.[i]) continue;
    const x = sx(g.x[i]);
    const y = sy(g.y[i]);
    if (x < -20 || x > w + 20 || y < -20 || y > h + 20) continue;
    const r = g.radius[i];
    const kind = g.kind[i];
    ctx.beginPath();
    if (kind === KIND.feature) ctx.arc(x, y, r, 0, 2 * Math.PI);
    else if (kind === KIND.error) ctx.rect(x - r, y - r, 2 * r, 2 * r);
    else ctx.rect(x - 6, y - 5, 12, 10);
    ctx.fillStyle = kind === KIND.error ? v.colors.muted : kind === KIND.feature ? v.colors.fg : v.colors.accent;
    const near = isolate >= 0 ? i === isolate || isolated(g, visible, isolate, i) : i === v.focus || v.neighbours.has(i);
    ctx.globalAlpha = dim && !near ? 0.35 : 1;
    ctx.fill();
    ctx.globalAlpha = 1;
    const node = g.node[i];
    if (selected.has(node) || pinned.has(node) || i === v.hover) {
      ctx.lineWidth = selected.has(node) ? 2.5 : 1.5;
      ctx.strokeStyle = selected.has(node) ? v.colors.accent : pinned.has(node) ? "#e6a700" : v.colors.fg;
      ctx.beginPath();
      ctx.arc(x, y, r + 3, 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  const labels = v.kx >= LABEL_ZOOM ? nodeLabels(ctx, g, visible, v, sx, sy) : 0;

  // Token and logit text (inert: canvas text), thinned so that no two labels overlap.
  ctx.fillStyle = v.colors.fg;
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  for (const kind of [KIND.token, KIND.logit]) {
    let lastRight = -Infinity;
    const order: number[] = [];
    for (let i = 0; i < g.count; i++) if (visible.nodes[i] && g.kind[i] === kind) order.push(i);
    order.sort((a, b) => g.x[a] - g.x[b]);
    for (const i of order) {
      const x = sx(g.x[i]);
      const y = sy(g.y[i]);
      if (x < -80 || x > w + 80 || y < -40 || y > h + 40) continue;
      const text = visibleText(kind === KIND.token ? g.header.tokens[g.pos[i]] ?? "" : g.logitText(i));
      const room = kind === KIND.token ? Math.max(24, g.colWidths[g.pos[i]] * v.kx - 4) : 68; // fits its column
      const shown = fitText(ctx, text, room);
      const width = ctx.measureText(shown).width;
      const left = x - width / 2;
      if (left < lastRight + 4) continue;
      ctx.fillText(shown, left, kind === KIND.token ? y + 8 : y - 20);
      lastRight = left + width;
    }
  }
  // Row labels last, on the view's background, at the left edge of the view whatever the pan.
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "middle";
  for (let r = 0; r < g.rowY.length; r++) {
    const y = sy(g.rowY[r]);
    if (y < -20 || y > h + 20) continue;
    const name = r === 0 ? "emb" : r === g.rowY.length - 1 ? "logits" : `L${r - 1}`;
    ctx.fillStyle = v.colors.bg;
    ctx.globalAlpha = 0.85;
    ctx.fillRect(0, y - 7, ctx.measureText(name).width + 5, 14);
    ctx.globalAlpha = 1;
    ctx.fillStyle = v.colors.muted;
    ctx.fillText(name, 2, y);
  }
  return { edges: drawnEdges, labels };
}

// Whether local node `i` is at the other end of a drawn edge of the hovered node `h` (cached per frame pair).
let neighbourCache: { g: Graph; visible: Visible; h: number; set: Set<number> } | null = null;
function isolated(g: Graph, visible: Visible, h: number, i: number): boolean {
  if (!neighbourCache || neighbourCache.g !== g || neighbourCache.visible !== visible || neighbourCache.h !== h) {
    const set = new Set<number>();
    for (let j = 0; j < visible.edges.length; j++) {
      const e = visible.edges[j];
      if (g.src[e] === h) set.add(g.dst[e]);
      if (g.dst[e] === h) set.add(g.src[e]);
    }
    neighbourCache = { g, visible, h, set };
  }
  return neighbourCache.set.has(i);
}

/** Short labels beside drawn feature and error nodes (most influential first, none overlapping); their count. */
function nodeLabels(
  ctx: CanvasRenderingContext2D, g: Graph, visible: Visible, v: DrawState, sx: (x: number) => number,
  sy: (y: number) => number,
): number {
  const order: number[] = [];
  for (let i = 0; i < g.count; i++) {
    if (!visible.nodes[i] || v.hidden?.[i] || g.kind[i] > KIND.error) continue;
    const x = sx(g.x[i]);
    const y = sy(g.y[i]);
    if (x >= 0 && x <= v.w && y >= 0 && y <= v.h) order.push(i);
  }
  order.sort((a, b) => g.influence[b] - g.influence[a]);
  ctx.font = "10px sans-serif";
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  const boxes: [number, number, number, number][] = [];
  let count = 0;
  for (const i of order) {
    const text = fitText(ctx, g.shortLabel(i), 110);
    const x = sx(g.x[i]) + g.radius[i] * Math.min(v.kx, 3) + 3;
    const y = sy(g.y[i]);
    const w = ctx.measureText(text).width;
    if (boxes.some(([bx, by, bw, bh]) => x < bx + bw && x + w > bx && y - 6 < by + bh && y + 6 > by)) continue;
    boxes.push([x, y - 6, w, 12]);
    ctx.fillStyle = v.colors.bg;
    ctx.globalAlpha = 0.75;
    ctx.fillRect(x - 1, y - 6, w + 2, 12);
    ctx.globalAlpha = 1;
    ctx.fillStyle = v.colors.fg;
    ctx.fillText(text, x, y);
    count++;
  }
  ctx.font = "11px sans-serif";
  return count;
}

/** `text` cut (with "…") to at most `maxPx` CSS px wide and 14 characters. */
export function fitText(ctx: CanvasRenderingContext2D, text: string, maxPx: number): string {
  let shown = text.length > 14 ? `${text.slice(0, 13)}…` : text;
  while (shown.length > 1 && ctx.measureText(shown).width > maxPx) shown = `${shown.slice(0, -2)}…`;
  return shown;
}
