// Bundle each widget front end (src/widgets/<name>.ts) into one standalone ES module for anywidget:
// sgl_jupyter/jupyter/static/<name>.js. No imports remain, so any anywidget host (JupyterLab, Notebook 7,
// VS Code, marimo) can load it. The module exports only anywidget's `export default { render }`.
import { build } from 'esbuild';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const WIDGETS = ['token_stream', 'radix_tree', 'throughput'];
const outdir = join(here, '..', 'sgl_jupyter', 'jupyter', 'static');
mkdirSync(outdir, { recursive: true });

// The source modules also export their parts for the unit tests; the entry re-exports the default only.
const entryOnly = {
  name: 'default-export-entry',
  setup(b) {
    b.onResolve({ filter: /^widget-entry:/ }, args => ({ path: args.path.slice('widget-entry:'.length), namespace: 'entry' }));
    b.onLoad({ filter: /.*/, namespace: 'entry' }, args => ({
      contents: `export { default } from './${args.path}';`,
      resolveDir: join(here, 'src', 'widgets'),
      loader: 'ts'
    }));
  }
};

const result = await build({
  entryPoints: Object.fromEntries(WIDGETS.map(name => [name, `widget-entry:${name}`])),
  outdir,
  write: false,
  bundle: true,
  format: 'esm',
  target: ['es2020'],
  platform: 'browser',
  minify: true,
  legalComments: 'none',
  charset: 'utf8',
  logLevel: 'warning',
  plugins: [entryOnly],
  banner: { js: '// sgl_jupyter widget front end, built from labextension/src/widgets (do not edit).' }
});

for (const file of result.outputFiles) {
  // esbuild spells a bundle's default export `export{x as default}`; write anywidget's usual `export default x`.
  const code = file.text.replace(/export\s*\{\s*([\w$]+) as default\s*\};?\s*$/, 'export default $1;\n');
  if (code === file.text) {
    throw new Error(`${file.path}: expected the bundle to end with its default export`);
  }
  writeFileSync(file.path, code);
}
console.log(`built ${WIDGETS.map(n => `${n}.js`).join(', ')} -> ${outdir}`);
