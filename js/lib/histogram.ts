// A small SVG bar chart of an activation histogram.
//
//   drawHistogram(edges, counts, {width, height, label})  bars between bin edges, each with a tooltip of its
//                                                        range and count; the value range as axis labels
//
// Numbers by lib/format.ts; text via textContent only; colours from theme.css (.gs-hist-*).
import { svg } from "./dom";
import { formatValue } from "./format";

/**
 * Draws `counts[i]` as a bar from `edges[i]` to `edges[i+1]` into a new <svg>. Returns the element, whose
 * bars carry a title with their range and count.
 */
export function drawHistogram(
  edges: ArrayLike<number>,
  counts: ArrayLike<number>,
  opts: { width?: number; height?: number; label?: string } = {},
): SVGSVGElement {
  const width = opts.width ?? 360;
  const height = opts.height ?? 90;
  const padBottom = 16;
  const plotH = height - padBottom;
  const root = svg("svg", {
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    class: "gs-histogram",
    role: "img",
  });
  const n = counts.length;
  if (n === 0 || edges.length !== n + 1) return root;
  const lo = edges[0];
  const hi = edges[n];
  const span = hi - lo || 1;
  let maxCount = 0;
  for (let i = 0; i < n; i++) maxCount = Math.max(maxCount, counts[i]);
  if (opts.label) {
    const t = svg("title", {});
    t.textContent = opts.label;
    root.append(t);
  }
  for (let i = 0; i < n; i++) {
    const x0 = ((edges[i] - lo) / span) * width;
    const x1 = ((edges[i + 1] - lo) / span) * width;
    const h = maxCount > 0 ? (counts[i] / maxCount) * (plotH - 2) : 0;
    const bar = svg("rect", {
      x: x0.toFixed(2),
      y: (plotH - h).toFixed(2),
      width: Math.max(0.5, x1 - x0 - 0.5).toFixed(2),
      height: h.toFixed(2),
      class: "gs-hist-bar",
    });
    const tip = svg("title", {});
    tip.textContent = `${formatValue(edges[i])} – ${formatValue(edges[i + 1])}: ${counts[i].toLocaleString()}`;
    bar.append(tip);
    root.append(bar);
  }
  root.append(svg("line", { x1: 0, y1: plotH, x2: width, y2: plotH, class: "gs-hist-axis" }));
  const left = svg("text", { x: 0, y: height - 3, class: "gs-hist-tick" });
  left.textContent = formatValue(lo);
  const right = svg("text", { x: width, y: height - 3, class: "gs-hist-tick", "text-anchor": "end" });
  right.textContent = formatValue(hi);
  root.append(left, right);
  return root;
}
