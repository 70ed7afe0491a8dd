// Builds the prebuilt JupyterLab extension (js/labextension/plugin.ts) into gemscope_widgets/labextension/, which
// pyproject.toml installs as share/jupyter/labextensions/gemscope-widgets. Two steps: esbuild compiles the plugin to
// build/labextension/plugin.js (package.json's "main"), then @jupyterlab/builder (what `jupyter labextension build`
// runs) wraps it as a module-federation container, against the JupyterLab core metadata of @jupyterlab/core-meta.
// Calling the builder directly needs no Python in the build environment. Skipped when the output is newer than
// every input; `--force` rebuilds.
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const require = createRequire(import.meta.url);
const work = join(root, "build", "labextension");
const output = join(root, "gemscope_widgets", "labextension", "package.json");
const inputs = [
  join(here, "plugin.ts"),
  join(here, "saved_view.css"),
  join(here, "build.mjs"),
  join(root, "package.json"),
];

const mtime = (path) => (existsSync(path) ? statSync(path).mtimeMs : -1);
const built = mtime(output);
if (!process.argv.includes("--force") && built > 0 && inputs.every((path) => mtime(path) < built)) {
  console.log("labextension: up to date (gemscope_widgets/labextension)");
  process.exit(0);
}

for (const pkg of ["@jupyterlab/builder", "@jupyterlab/core-meta"]) {
  try {
    require.resolve(`${pkg}/package.json`);
  } catch {
    console.error(`labextension: ${pkg} is not installed; run \`npm install\` first`);
    process.exit(1);
  }
}

const started = performance.now();
await esbuild.build({
  entryPoints: [join(here, "plugin.ts")],
  bundle: true,
  format: "esm",
  target: "es2020",
  outfile: join(work, "plugin.js"),
  logLevel: "warning",
});

// @jupyterlab/builder reads the core's package.json from a folder (--core-path).
const core = join(work, "core");
mkdirSync(core, { recursive: true });
copyFileSync(require.resolve("@jupyterlab/core-meta/core.package.json"), join(core, "package.json"));

const builder = require.resolve("@jupyterlab/builder/lib/build-labextension.js");
const run = spawnSync(process.execPath, [builder, "--core-path", core, root], { cwd: root, stdio: "inherit" });
if (run.status !== 0) {
  console.error(`labextension: @jupyterlab/builder failed (exit status ${run.status})`);
  process.exit(run.status ?? 1);
}
console.log(`labextension: built in ${((performance.now() - started) / 1000).toFixed(1)} s`);
