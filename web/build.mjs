// Builds the web app into dist/: one minified, content-hashed script and
// stylesheet, and index.html pointing at them. `npm run check` type-checks
// first (esbuild strips types without checking them). Prints the bundle's
// size, raw and gzipped, and writes it to dist/bundle-size.json.
import { build } from "esbuild";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { gzipSync } from "node:zlib";
import path from "node:path";

const here = path.dirname(new URL(import.meta.url).pathname);
const dist = path.join(here, "dist");

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
const result = await build({
  entryPoints: [path.join(here, "src/main.tsx")],
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "esm",
  target: ["es2022"],
  outdir: path.join(dist, "assets"),
  entryNames: "[name]-[hash]",
  metafile: true,
  legalComments: "none",
  logLevel: "warning",
});

const assets = {};
let raw = 0;
let gzipped = 0;
for (const [file, output] of Object.entries(result.metafile.outputs)) {
  const bytes = await readFile(path.join(here, file));
  raw += bytes.length;
  gzipped += gzipSync(bytes, { level: 9 }).length;
  assets[path.extname(file)] = path.relative(dist, path.join(here, file));
  void output;
}
const template = await readFile(path.join(here, "index.html"), "utf8");
const page = template
  .replace("%SCRIPT%", `./${assets[".js"]}`)
  .replace("%STYLE%", `./${assets[".css"]}`);
await writeFile(path.join(dist, "index.html"), page);
const size = { bytes: raw, gzip_bytes: gzipped, files: Object.values(assets) };
await writeFile(path.join(dist, "bundle-size.json"), JSON.stringify(size) + "\n");
console.log(`web/dist: ${(raw / 1024).toFixed(1)} KiB, ${(gzipped / 1024).toFixed(1)} KiB gzipped`);
