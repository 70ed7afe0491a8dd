// Supernodes in the circuit view: each group of nodes the user named (graph.group in the kernel) drawn as one node.
//
//   GroupLayout  which groups are drawn (those with a drawn member), where (the centroid of their drawn members),
//                which drawn nodes they stand in for, and their edges: one per drawn neighbour (a node in no group,
//                or another group) that a drawn member edge reaches, weighted by the kernel's sum over every
//                member (node_summary.group_summaries = graph.grouped()), never a sum of what happens to be drawn
//   drawGroups   the group nodes and their edges on the canvas (names as canvas text, inert)
//   groupPanel   the "group" control (a name for the selected nodes) and the list of groups, each with "ungroup";
//                "suggest" lists graph.suggest_groups at the view's thresholds, each with "accept"
//   groupTip     the hover card of a group (textContent only)
import type { Graph, Visible } from "./circuit_graph";
import type { CircuitColors } from "./circuit_draw";
import { fitText } from "./circuit_draw";
import { el as element } from "./dom";
import { formatPercent, formatValue } from "./format";
import type { CircuitGroup, CircuitMessage, CircuitModel as Model } from "./protocol";

/** One drawn group: its summary, world position and radius, and the local indices of its drawn members. */
export interface DrawnGroup {
  group: CircuitGroup;
  x: number;
  y: number;
  r: number;
  members: number[];
}

/** One end of a group edge: a drawn group (its index in `drawn`) or a local node. */
export type End = { group: number } | { node: number };

/** A group edge: source, target and the summed weight. */
export interface GroupEdge {
  source: End;
  target: End;
  weight: number;
}

const GROUP_RADIUS = 9;

/** The groups drawn under `visible`, the nodes they stand in for, and their summed edges. */
export class GroupLayout {
  /** 1 for a drawn node a drawn group stands in for (neither it nor its edges are drawn one by one). */
  readonly hidden: Uint8Array;
  readonly drawn: DrawnGroup[] = [];
  readonly edges: GroupEdge[] = [];
  /** Groups with no drawn member at these thresholds (not drawn; the status line names them). */
  readonly undrawn: string[] = [];

  constructor(g: Graph, visible: Visible, groups: CircuitGroup[]) {
    this.hidden = new Uint8Array(g.count);
    const groupOf = new Int32Array(g.count).fill(-1);
    for (const group of groups) {
      const members = group.members.map((n) => g.local.get(n)).filter((i): i is number => i !== undefined && !!visible.nodes[i]);
      if (!members.length) {
        this.undrawn.push(group.name);
        continue;
      }
      const k = this.drawn.length;
      let x = 0;
      let y = 0;
      for (const i of members) {
        x += g.x[i];
        y += g.y[i];
        this.hidden[i] = 1;
        groupOf[i] = k;
      }
      this.drawn.push({ group, x: x / members.length, y: y / members.length, r: GROUP_RADIUS, members });
    }
    if (!this.drawn.length) return;
    // One edge per (end, end) pair a drawn member edge reaches; its weight is the kernel's sum over all members.
    const seen = new Set<string>();
    const end = (i: number): End => (groupOf[i] >= 0 ? { group: groupOf[i] } : { node: i });
    const key = (a: End) => ("group" in a ? `g${a.group}` : `n${a.node}`);
    for (let j = 0; j < visible.edges.length; j++) {
      const e = visible.edges[j];
      const s = g.src[e];
      const d = g.dst[e];
      if (groupOf[s] < 0 && groupOf[d] < 0) continue;
      if (groupOf[s] >= 0 && groupOf[s] === groupOf[d]) continue; // inside one group: internal
      const source = end(s);
      const target = end(d);
      const id = `${key(source)}>${key(target)}`;
      if (seen.has(id)) continue;
      seen.add(id);
      const weight = this.weight(source, target);
      if (weight !== 0) this.edges.push({ source, target, weight });
    }
  }

  /** What the supernodes change in the drawing, for the status line ("" without groups; starts with " · "). */
  note(): string {
    let text = "";
    if (this.drawn.length) {
      text += ` · ${this.drawn.length} supernode(s) drawn as one node each, their edges the sums over every member`;
    }
    if (this.undrawn.length) text += ` · not drawn (no member drawn here): ${this.undrawn.join(", ")}`;
    return text;
  }

  /** The kernel's summed weight from `source` to `target` (one of them a group). */
  private weight(source: End, target: End): number {
    if ("group" in source && "group" in target) {
      return this.drawn[source.group].group.to[this.drawn[target.group].group.name] ?? 0;
    }
    if ("group" in source && "node" in target) {
      return lookup(this.drawn[source.group].group.outputs, target.node);
    }
    if ("node" in source && "group" in target) return lookup(this.drawn[target.group].group.inputs, source.node);
    return 0;
  }

  /** World position of an edge end. */
  at(g: Graph, end: End): [number, number] {
    if ("group" in end) return [this.drawn[end.group].x, this.drawn[end.group].y];
    return [g.x[end.node], g.y[end.node]];
  }

  /** The drawn group under the screen point (px, py), or -1. */
  hit(px: number, py: number, t: { kx: number; ky: number; tx: number; ty: number }): number {
    for (let k = 0; k < this.drawn.length; k++) {
      const d = this.drawn[k];
      const dx = d.x * t.kx + t.tx - px;
      const dy = d.y * t.ky + t.ty - py;
      if (dx * dx + dy * dy <= (d.r + 3) * (d.r + 3)) return k;
    }
    return -1;
  }
}

function lookup(list: [number, number][], local: number): number {
  for (const [j, w] of list) if (j === local) return w;
  return 0;
}

/** Draws the groups' edges (under the nodes) and the group nodes with their names. */
export function drawGroups(
  ctx: CanvasRenderingContext2D,
  g: Graph,
  layout: GroupLayout,
  v: { kx: number; ky: number; tx: number; ty: number; hover: number; colors: CircuitColors },
): void {
  const sx = (x: number) => x * v.kx + v.tx;
  const sy = (y: number) => y * v.ky + v.ty;
  const maxW = Math.max(g.maxWeight, ...layout.edges.map((e) => Math.abs(e.weight)));
  for (const e of layout.edges) {
    const [x1, y1] = layout.at(g, e.source);
    const [x2, y2] = layout.at(g, e.target);
    ctx.beginPath();
    ctx.moveTo(sx(x1), sy(y1));
    ctx.lineTo(sx(x2), sy(y2));
    ctx.strokeStyle = e.weight >= 0 ? v.colors.pos : v.colors.neg;
    ctx.globalAlpha = 0.7;
    ctx.lineWidth = 1 + 3 * (maxW > 0 ? Math.sqrt(Math.abs(e.weight) / maxW) : 0);
    ctx.stroke();
  }
  ctx.globalAlpha = 1;
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  layout.drawn.forEach((d, k) => {
    const x = sx(d.x);
    const y = sy(d.y);
    ctx.beginPath();
    ctx.arc(x, y, d.r, 0, 2 * Math.PI);
    ctx.fillStyle = v.colors.accent;
    ctx.fill();
    ctx.lineWidth = k === v.hover ? 3 : 1.5;
    ctx.strokeStyle = v.colors.fg;
    ctx.stroke();
    const text = fitText(ctx, d.group.name, 120);
    ctx.fillStyle = v.colors.bg;
    ctx.globalAlpha = 0.8;
    ctx.fillRect(x + d.r + 2, y - 7, ctx.measureText(text).width + 4, 14);
    ctx.globalAlpha = 1;
    ctx.fillStyle = v.colors.fg;
    ctx.fillText(text, x + d.r + 4, y);
  });
}

/** The hover card of a drawn group. */
export function groupTip(g: Graph, d: DrawnGroup): HTMLElement[] {
  const out = [
    element("div", "gs-ct-tip-title", d.group.name),
    element("div", "", `supernode of ${d.group.members.length} nodes (${d.members.length} drawn)`),
    element("div", "", `influence ${formatValue(d.group.influence)} (sum)`),
  ];
  for (const i of d.members.slice(0, 8)) out.push(element("div", "gs-ct-tip-logit", g.label(i)));
  out.push(element("div", "gs-ct-tip-kind", "edges: sums over every member (graph.grouped())"));
  return out;
}

interface ModelLike {
  get<K extends keyof Model>(key: K): Model[K];
  send(content: CircuitMessage): void;
  on(event: string, callback: () => void): void;
}

/** The "group" control in `toolbar` and the list of groups in `list`; returns the function that redraws both. */
export function groupPanel(toolbar: HTMLElement, list: HTMLElement, model: ModelLike): () => void {
  const name = element("input", "gs-ct-group-name");
  name.type = "text";
  name.placeholder = "group name";
  name.size = 12;
  const button = element("button", "gs-ct-group", "group");
  button.type = "button";
  button.title = "draw the selected nodes as one node (a supernode) under this name";
  const suggest = element("button", "gs-ct-suggest", "suggest");
  suggest.type = "button";
  suggest.title = "graph.suggest_groups(): propose supernodes among the kept features at these thresholds";
  toolbar.append(name, button, suggest);
  let local = ""; // what the view itself refused (before asking the kernel)
  let suggesting = false; // a "suggest_groups" request awaits its answer
  suggest.addEventListener("click", () => {
    suggesting = true;
    render();
    model.send({ type: "suggest_groups" });
  });
  const submit = () => {
    const text = name.value.trim();
    local = (model.get("selected") ?? []).length < 2 ? "Select at least two nodes first (shift-click adds a node)."
      : !text ? "Give the group a name." : "";
    render();
    if (local) return;
    model.send({ type: "group", name: text });
    name.value = "";
  };
  button.addEventListener("click", submit);
  name.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") submit();
  });
  const render = () => {
    const groups = model.get("_groups") ?? [];
    const error = local || model.get("group_message") || "";
    const items = groups.map((group) => {
      const li = element("li", "gs-ct-group-item");
      li.dataset.name = group.name;
      const undo = element("button", "gs-ct-ungroup", "ungroup");
      undo.type = "button";
      undo.addEventListener("click", () => model.send({ type: "ungroup", name: group.name }));
      li.append(element("bdi", "gs-ct-group-title", group.name),
        ` ${group.members.length} nodes, influence ${formatValue(group.influence)} `, undo);
      return li;
    });
    const ul = element("ul", "gs-ct-groups");
    ul.append(...items);
    const message = element("div", "gs-error gs-ct-group-message", error);
    list.replaceChildren(...(error ? [message] : []), ...(items.length ? [ul] : []), ...suggestions());
  };
  const suggestions = (): HTMLElement[] => {
    if (suggesting) return [element("div", "gs-status gs-ct-suggest-status", "suggesting groups…")];
    const s = model.get("suggestions") ?? {};
    if (!("state" in s)) return [];
    if (s.state === "error") return [element("div", "gs-error gs-ct-suggest-status", s.message)];
    const [nt, et] = s.at;
    const now: [number, number] = [model.get("node_threshold"), model.get("edge_threshold")];
    const stale = nt !== now[0] || et !== now[1] ? " (thresholds changed since: suggest again for these)" : "";
    const left = s.dropped ? `; ${s.dropped} left out for keeping under 80% of their members' influence` : "";
    const head = element("div", "gs-ct-side-head gs-ct-suggest-status",
      s.items.length
        ? `suggested groups (graph.suggest_groups at nodes ${formatValue(nt)}, edges ${formatValue(et)})${left}${stale}`
        : `no groups suggested at nodes ${formatValue(nt)}, edges ${formatValue(et)}${left}${stale}`);
    const ul = element("ul", "gs-ct-suggestions");
    s.items.forEach((item, index) => {
      const li = element("li", "gs-ct-suggestion");
      li.dataset.name = item.name;
      li.dataset.members = item.members.join(",");
      const accept = element("button", "gs-ct-accept", "accept");
      accept.type = "button";
      accept.title = "group these nodes under this name (graph.group)";
      accept.addEventListener("click", () => model.send({ type: "accept_suggestion", index }));
      li.append(element("bdi", "gs-ct-group-title", item.name),
        ` ${item.members.length} nodes, edge cosine ${formatValue(item.cosine)}, keeps ` +
        `${formatPercent(item.retention)} of their influence `, accept);
      ul.append(li);
    });
    return s.items.length ? [head, ul] : [head];
  };
  const fromKernel = () => {
    local = "";
    render();
  };
  model.on("change:_groups", fromKernel);
  model.on("change:group_message", fromKernel);
  model.on("change:suggestions", () => {
    suggesting = false;
    render();
  });
  model.on("change:node_threshold", render);
  model.on("change:edge_threshold", render);
  return render;
}
