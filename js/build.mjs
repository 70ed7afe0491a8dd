// Bundles every top-level js/*.ts file (not *.d.ts, *.test.ts, *.config.ts) into gemscope_widgets/static/<name>.js (one ESM entry per widget).
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const entries = readdirSync(here)
  .filter((f) => f.endsWith(".ts") && ![".d.ts", ".test.ts", ".config.ts"].some((end) => f.endsWith(end)))
  .map((f) => join(here, f));
const watch = process.argv.includes("--watch");

const options = {
  entryPoints: entries,
  bundle: true,
  format: "esm",
  target: "es2020",
  minify: !watch,
  sourcemap: watch ? "inline" : false,
  outdir: join(here, "..", "gemscope_widgets", "static"),
  loader: { ".css": "text" },
  define: { "define.amd": "false" },
  logLevel: "info",
};

if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
} else {
  await esbuild.build(options);
}
