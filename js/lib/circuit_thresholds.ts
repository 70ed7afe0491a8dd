// The circuit view's threshold panel: two sliders (node and edge threshold, circuit-tracer's prune() parameters)
// with their values written beside them. A slider move sets the trait and tells the view at once, so it previews
// by influence rank while the kernel computes prune() at the new thresholds.
import { el as element } from "./dom";
import { formatValue } from "./format";
import type { CircuitModel as Model } from "./protocol";

interface ModelLike {
  get<K extends keyof Model>(key: K): Model[K];
  set<K extends keyof Model>(key: K, value: Model[K]): void;
  save_changes(): void;
}

/** The panel's handle: `show()` writes the model's thresholds into the sliders and their values. */
export interface ThresholdPanel {
  show(): void;
}

/** Adds the node and edge sliders to `toolbar`; `moved()` runs after a slider changed its trait. */
export function thresholdPanel(toolbar: HTMLElement, model: ModelLike, moved: () => void): ThresholdPanel {
  const slider = (cls: string, title: string, text: string, trait: "node_threshold" | "edge_threshold") => {
    const label = element("label", cls, text);
    label.title = title;
    const input = element("input");
    input.type = "range";
    input.min = "0";
    input.max = "1";
    input.step = "0.01";
    const out = element("span", "gs-ct-value");
    label.append(input, out);
    toolbar.append(label);
    input.addEventListener("input", () => {
      model.set(trait, Number(input.value));
      model.save_changes();
      moved();
    });
    return () => {
      input.value = String(model.get(trait));
      out.textContent = formatValue(model.get(trait));
    };
  };
  const nodes = slider("gs-ct-node-threshold", "keep the nodes covering this share of influence", "nodes ",
    "node_threshold");
  const edges = slider("gs-ct-edge-threshold", "keep the edges covering this share of influence", "edges ",
    "edge_threshold");
  return {
    show: () => {
      nodes();
      edges();
    },
  };
}
