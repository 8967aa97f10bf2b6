// Build the federated (prebuilt) JupyterLab extension into ../sgl_jupyter/labextension with
// @jupyterlab/builder. It needs JupyterLab's core package.json (the versions of the shared packages): the
// `staging` folder of the jupyterlab Python package that $PYTHON (or python3/python on PATH) imports.
// No network is used.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const development = process.argv.includes('--development');

function corePath() {
  const snippet = 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))';
  for (const python of [process.env.PYTHON, 'python3', 'python'].filter(Boolean)) {
    try {
      const out = execFileSync(python, ['-c', snippet], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
      if (out && existsSync(join(out, 'package.json'))) {
        return out;
      }
    } catch {
      // try the next interpreter
    }
  }
  console.error(
    'build-labextension: cannot find JupyterLab core metadata. Install jupyterlab>=4 in the Python that ' +
      'builds (pip install "jupyterlab>=4,<5"), or point PYTHON=/path/to/python at one that has it.'
  );
  process.exit(2);
}

const builder = require.resolve('@jupyterlab/builder/lib/build-labextension.js');
const args = [builder, '--core-path', corePath()];
if (development) {
  args.push('--development', '--source-map');
}
args.push(here);
execFileSync(process.execPath, args, { stdio: 'inherit', cwd: here });
