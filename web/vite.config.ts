import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// Served by the API under /ui (api/console.py); `npm run dev` proxies /v1 to a local API.
export default defineConfig({
  base: "/ui/",
  plugins: [react()],
  build: { outDir: "dist", sourcemap: false, chunkSizeWarningLimit: 4096 },
  server: { proxy: { "/v1": "http://127.0.0.1:8000" } },
});
