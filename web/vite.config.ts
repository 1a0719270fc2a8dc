import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const stub = (name: string) => decodeURIComponent(new URL(`./stubs/monaco/${name}`, import.meta.url).pathname);

// Served by the API under /ui (api/console.py); `npm run dev` proxies /v1 to a local API.
export default defineConfig({
  base: "/ui/",
  plugins: [react()],
  resolve: {
    // Monaco's diff editors, which the console never opens, out of the bundle (ADR 0069).
    alias: [
      { find: /^.*\/widget\/diffEditor\/diffEditorWidget\.js$/, replacement: stub("diffEditorWidget.js") },
      {
        find: /^.*\/widget\/multiDiffEditor\/multiDiffEditorWidget\.js$/,
        replacement: stub("multiDiffEditorWidget.js"),
      },
    ],
  },
  esbuild: { legalComments: "none" },
  build: { outDir: "dist", sourcemap: false, chunkSizeWarningLimit: 4096, target: "es2022" },
  server: { proxy: { "/v1": "http://127.0.0.1:8000" } },
});
