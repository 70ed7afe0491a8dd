// @vitest-environment happy-dom
import { describe, expect, it } from "vitest";
import { choice, el, labelled, mountTheme, svg } from "./dom";

describe("el", () => {
  it("sets the class and the text as text", () => {
    const node = el("div", "a b", "<b>x</b>");
    expect(node.className).toBe("a b");
    expect(node.children).toHaveLength(0);
    expect(node.textContent).toBe("<b>x</b>");
  });
  it("leaves the text empty when none is given", () => {
    expect(el("span").textContent).toBe("");
  });
});

describe("svg", () => {
  it("creates SVG-namespaced elements with attributes", () => {
    const rect = svg("rect", { x: 1, width: "2" });
    expect(rect.namespaceURI).toBe("http://www.w3.org/2000/svg");
    expect(rect.getAttribute("x")).toBe("1");
  });
});

describe("labelled and choice", () => {
  it("wraps a control in a label", () => {
    const input = el("input");
    const label = labelled("top", input);
    expect(label.textContent).toBe("top ");
    expect(label.lastElementChild).toBe(input);
  });
  it("builds options and selects the value", () => {
    const s = choice([["a", "Alpha"], ["b", "Beta"]], "b");
    expect(s.options).toHaveLength(2);
    expect(s.value).toBe("b");
  });
});

describe("mountTheme", () => {
  it("marks the root and puts the styles first", () => {
    const root = el("div");
    root.append(el("p"));
    mountTheme(root, "gs-heatmap", ".gs-heatmap .x { color: red; }");
    expect(root.classList.contains("gs-root")).toBe(true);
    expect(root.classList.contains("gs-heatmap")).toBe(true);
    expect(root.firstElementChild?.tagName).toBe("STYLE");
    expect(root.firstElementChild?.textContent).toContain(".gs-heatmap .x { color: red; }");
  });
});
