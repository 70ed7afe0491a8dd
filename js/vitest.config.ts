// Unit tests of js/lib/*: `npm test`. Node environment; files that need a DOM opt in to happy-dom with a
// `// @vitest-environment happy-dom` first line (no browser download).
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  // Vite's cache beside the project's other npm state, never inside the js/ sources run.sh hashes.
  cacheDir: fileURLToPath(new URL("../node_modules/.vite", import.meta.url)),
  test: {
    environment: "node",
    include: ["lib/**/*.test.ts"],
  },
});
