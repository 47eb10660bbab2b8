// The demo inbox page (index.html, demo/) in dev (`npm run dev`) and as a static build
// (`npm run build`, into dist/, what tests/test_browser.py serves); the unit tests (vitest).
import { defineConfig } from "vitest/config";

export default defineConfig({
  server: { host: "127.0.0.1", port: 5173, strictPort: true },
  preview: { host: "127.0.0.1", port: 4173, strictPort: true },
  build: { outDir: "dist", emptyOutDir: true, target: "es2022" },
  test: { include: ["test/**/*.test.ts"], environment: "node" },
});
