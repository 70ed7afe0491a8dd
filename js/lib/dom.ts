// DOM building blocks shared by every widget.
//
//   el(tag, className?, text?)      an element; text goes in via textContent, never as HTML
//   svg(tag, attrs)                 an SVG element with attributes
//   labelled(text, control)         <label>text control</label>
//   choice([[value, label]], value) a <select> with its options, set to `value`
//   mountTheme(root, view, ...css)  marks `root` as a themed widget root of class `view` (every rule of the view's
//                                   CSS starts with `.view`, every rule of lib/theme.css with `.gs-root`, so no
//                                   view's rule matches inside another view) and adds lib/theme.css + the view's CSS
//
// Keyboard handling inside widgets lives in lib/keys.ts.
import themeCss from "./theme.css";

/** A new `tag` element with an optional class list and text (set as textContent). */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = "",
  text?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** A new SVG element with the given attributes (values written with String()). */
export function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number> = {},
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

/** `<label>text control</label>`: clicking the text focuses the control. */
export function labelled(text: string, control: HTMLElement): HTMLLabelElement {
  const label = el("label", "", text.endsWith(" ") ? text : `${text} `);
  label.append(control);
  return label;
}

/** A `<select>` with one option per `[value, label]`, set to `value`. */
export function choice(options: readonly (readonly [string, string])[], value: string): HTMLSelectElement {
  const s = el("select");
  for (const [v, label] of options) {
    const o = el("option", "", label);
    o.value = v;
    s.append(o);
  }
  s.value = value;
  return s;
}

/** The root class of each view: every selector of the view's CSS file starts with it (tested by css_scope.test.ts). */
export const VIEW_ROOTS = {
  heatmap: "gs-heatmap",
  feature_pane: "gs-feature-pane",
  steer: "gs-steering",
  contrast: "gs-contrast",
  chat: "gs-chat",
  circuit: "gs-circuit",
  token_view: "gs-token-view",
  graph_comparison: "gs-graph-comparison",
  probe: "gs-probe",
} as const;

export type ViewRoot = (typeof VIEW_ROOTS)[keyof typeof VIEW_ROOTS];

/**
 * Makes `root` a themed widget root: adds the `gs-root` class, the view's own class `view` (the prefix of all
 * of its CSS) and a <style> holding the shared theme plus the view's CSS. Styles live inside the widget so it
 * works in any anywidget host; being scoped, one view's rules never restyle another view on the same page.
 */
/**
 * Calls `fn` when JupyterLab switches theme (it flips `data-jp-theme-light` / `data-jp-theme-name` on `<body>`
 * once the theme's CSS is in): views that paint a canvas with theme colours repaint then. Returns the disposer.
 */
export function onThemeChange(fn: () => void): () => void {
  if (typeof MutationObserver === "undefined" || !document.body) return () => {};
  const observer = new MutationObserver(() => fn());
  observer.observe(document.body, { attributes: true, attributeFilter: ["data-jp-theme-light", "data-jp-theme-name"] });
  return () => observer.disconnect();
}

export function mountTheme(root: HTMLElement, view: ViewRoot, ...extraCss: string[]): HTMLElement {
  root.classList.add("gs-root", view);
  const style = el("style");
  style.textContent = [themeCss, ...extraCss].join("\n");
  root.prepend(style);
  return root;
}
