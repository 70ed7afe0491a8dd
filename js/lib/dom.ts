// DOM building blocks shared by every widget.
//
//   el(tag, className?, text?)      an element; text goes in via textContent, never as HTML
//   svg(tag, attrs)                 an SVG element with attributes
//   labelled(text, control)         <label>text control</label>
//   choice([[value, label]], value) a <select> with its options, set to `value`
//   mountTheme(root, ...css)        marks `root` as a themed widget root and adds lib/theme.css + the widget's CSS
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

/**
 * Makes `root` a themed widget root: adds the `gs-root` class and a <style> holding the shared theme
 * plus any widget-specific CSS. Styles live inside the widget so it works in any anywidget host.
 */
export function mountTheme(root: HTMLElement, ...extraCss: string[]): HTMLElement {
  root.classList.add("gs-root");
  const style = el("style");
  style.textContent = [themeCss, ...extraCss].join("\n");
  root.prepend(style);
  return root;
}
