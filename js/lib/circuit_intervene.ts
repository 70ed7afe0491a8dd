// The circuit view's intervention panel: "clamp to 0" and "scale ×" with its factor act on the selected feature
// nodes through the kernel (graph.intervene), and the result table under the graph (circuit_result.ts).
// Nothing is computed here: the buttons send a CircuitMessage; the record comes back in the `intervention` trait.
import { el as element } from "./dom";
import { renderIntervention } from "./circuit_result";
import type { CircuitMessage, CircuitModel as Model } from "./protocol";

interface ModelLike {
  get<K extends keyof Model>(key: K): Model[K];
  send(content: CircuitMessage): void;
  on(event: string, callback: () => void): void;
}

/**
 * Adds the clamp and scale controls to `toolbar` and draws the last intervention into `result`.
 * `features()` gives the selected feature nodes (graph indices); `nodeLabel(node)` names a node as the view does.
 * Returns the function that redraws the result.
 */
export function interventionPanel(
  toolbar: HTMLElement,
  result: HTMLElement,
  model: ModelLike,
  features: () => number[],
  nodeLabel: (node: number) => string | undefined,
): () => void {
  const button = (cls: string, text: string, title: string) => {
    const b = element("button", cls, text);
    b.type = "button";
    b.title = title;
    toolbar.append(b);
    return b;
  };
  const clampBtn = button("gs-ct-clamp", "clamp to 0", "set the selected features to 0 and show the logit change");
  const scaleBtn = button("gs-ct-scale", "scale ×", "multiply the selected features by the factor");
  const factor = element("input", "gs-ct-factor");
  factor.type = "number";
  factor.step = "0.5";
  factor.value = "2";
  toolbar.append(factor);
  const intervene = (mode: "set" | "scale", value: number) => {
    if (!features().length) {
      result.replaceChildren(element("div", "gs-error", "Select one or more feature nodes first (shift-click adds)."));
      return;
    }
    model.send({ type: "intervene", mode, value });
  };
  clampBtn.addEventListener("click", () => intervene("set", 0));
  scaleBtn.addEventListener("click", () => intervene("scale", Number(factor.value)));
  const render = () => renderIntervention(result, model.get("intervention") ?? {}, nodeLabel);
  model.on("change:intervention", render);
  return render;
}
