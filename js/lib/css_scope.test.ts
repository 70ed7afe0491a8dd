// Every view's CSS is scoped to its own root: each selector of js/<view>.css starts with the view's root class
// (VIEW_ROOTS in dom.ts), so no rule of one view can match an element of another view on the same page. Each
// selector of lib/theme.css starts with :where(.gs-root) (a copy of it sits in every view's <style>, so its rules
// weigh no more than a class and a view's own rules win whatever the order of the views), or with a host flag on
// <body> then .gs-root (dark themes). The browser check is tests/ui/test_views_isolated.py.
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { VIEW_ROOTS } from "./dom";

const JS = join(dirname(fileURLToPath(import.meta.url)), "..");

/** The selectors of a stylesheet's style rules (inside @media too), comments dropped. */
export function selectors(css: string): string[] {
  const text = css.replace(/\/\*[\s\S]*?\*\//g, "");
  const out: string[] = [];
  const walk = (t: string) => {
    let i = 0;
    while (i < t.length) {
      const open = t.indexOf("{", i);
      if (open < 0) {
        if (t.slice(i).trim()) throw new Error(`text outside a rule: ${t.slice(i).trim()}`);
        return;
      }
      let depth = 0;
      let close = open;
      for (; close < t.length; close++) {
        if (t[close] === "{") depth++;
        else if (t[close] === "}" && --depth === 0) break;
      }
      if (depth !== 0) throw new Error("unbalanced braces");
      const head = t.slice(i, open).trim();
      if (head.startsWith("@")) walk(t.slice(open + 1, close));
      else out.push(...head.split(",").map((s) => s.trim()));
      i = close + 1;
    }
  };
  walk(text);
  return out;
}

/** Whether `selector` starts with `.root` (after an optional host compound on <body>, e.g. a dark-theme flag). */
export function startsWithRoot(selector: string, root: string): boolean {
  const rest = selector.replace(/^body(\[[^\]]*\]|\.[\w-]+|:not\([^)]*\))*\s+/, "");
  return new RegExp(`^\\.${root}(?![\\w-])`).test(rest);
}

const ROOTS: Record<string, string> = VIEW_ROOTS;
const viewCss = readdirSync(JS).filter((f) => f.endsWith(".css"));

describe("selectors", () => {
  it("finds rules inside @media and skips comments", () => {
    const css = "/* a, b { } */ .x .y, .x:hover { c: d; }\n@media (x) { body.dark .x { e: f; } }";
    expect(selectors(css)).toEqual([".x .y", ".x:hover", "body.dark .x"]);
  });
  it("tells a root from a class that merely starts like it", () => {
    expect(startsWithRoot(".gs-steer .gs-row", "gs-steer")).toBe(true);
    expect(startsWithRoot(".gs-steer.gs-busy", "gs-steer")).toBe(true);
    expect(startsWithRoot(".gs-steer-row", "gs-steer")).toBe(false);
    expect(startsWithRoot('body[data-jp-theme-light="false"] .gs-root', "gs-root")).toBe(true);
    expect(startsWithRoot(".gs-ct-pos", "gs-circuit")).toBe(false);
  });
});

describe("view CSS scoping", () => {
  it("has one distinct root per view", () => {
    const roots = Object.values(ROOTS);
    expect(new Set(roots).size).toBe(roots.length);
    expect(roots).not.toContain("gs-root");
  });

  it.each(viewCss)("%s: every selector starts with its view's root and names no other view", (file) => {
    const view = file.replace(/\.css$/, "");
    const root = ROOTS[view];
    expect(root, `${file} has no entry in VIEW_ROOTS (lib/dom.ts)`).toBeDefined();
    const sels = selectors(readFileSync(join(JS, file), "utf8"));
    expect(sels.length).toBeGreaterThan(0);
    for (const sel of sels) {
      expect(startsWithRoot(sel, root), `${file}: "${sel}" does not start with .${root}`).toBe(true);
      for (const other of Object.values(ROOTS)) {
        if (other !== root) expect(sel, `${file}: "${sel}" names another view`).not.toMatch(new RegExp(`\\.${other}(?![\\w-])`));
      }
    }
  });

  it("lib/theme.css: every selector starts with :where(.gs-root), or a <body> flag then .gs-root", () => {
    const sels = selectors(readFileSync(join(JS, "lib", "theme.css"), "utf8"));
    expect(sels.length).toBeGreaterThan(0);
    for (const sel of sels) {
      const light = /^:where\(\.gs-root\)(?![\w-])/.test(sel);
      const host = sel.startsWith("body") && startsWithRoot(sel, "gs-root");
      expect(light || host, `theme.css: "${sel}"`).toBe(true);
    }
  });

  it("no element but a view's root carries a view's root class", () => {
    const sources = [
      ...readdirSync(JS).filter((f) => f.endsWith(".ts")).map((f) => join(JS, f)),
      ...readdirSync(join(JS, "lib")).filter((f) => f.endsWith(".ts")).map((f) => join(JS, "lib", f)),
    ].filter((f) => !f.endsWith(".test.ts") && !f.endsWith("dom.ts"));
    for (const file of sources) {
      const text = readFileSync(file, "utf8");
      for (const root of Object.values(ROOTS)) {
        // A class list in a string: "gs-x", "gs-x gs-y", "... gs-x".
        expect(text, `${file} uses the root class ${root} on an element`).not.toMatch(
          new RegExp(`["'\`]([\\w-]+ )*${root}( [\\w-]+)*["'\`]`),
        );
      }
    }
  });

  it("each view mounts its theme with its own root", () => {
    const entries = readdirSync(JS).filter((f) => /^[a-z_]+\.ts$/.test(f) && !f.endsWith(".config.ts"));
    const mounting = entries.filter((f) => readFileSync(join(JS, f), "utf8").includes("mountTheme("));
    expect(mounting.length).toBeGreaterThan(0);
    for (const f of mounting) {
      const view = f.replace(/\.ts$/, "");
      expect(ROOTS[view], `${f} has no entry in VIEW_ROOTS`).toBeDefined();
      expect(readFileSync(join(JS, f), "utf8")).toMatch(new RegExp(`mountTheme\\([\\w.]+, VIEW_ROOTS\\.${view}\\b`));
    }
  });
});
