// Drives a real JupyterLab in headless Debian Chromium with playwright-core (never downloads a browser).
// usage: node lab_driver.mjs <scenario> <lab-url> <notebook> <screenshot-dir>
// Prints `RESULT {json}`: what the page showed; tests/frontend/test_browser.py asserts on it.
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(new URL('../../labextension/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const [scenario, baseUrl, notebook, outDir] = process.argv.slice(2);
const result = { scenario, pageErrors: [], consoleErrors: [], outputs: {} };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-dev-shm-usage'
  ]
});
const page = await browser.newPage({ viewport: { width: 1440, height: 960 }, locale: 'zh-CN' });
page.on('pageerror', err => result.pageErrors.push(String(err)));
page.on('console', msg => {
  if (msg.type() === 'error') {
    result.consoleErrors.push(msg.text());
  }
});

let shot = 0;
async function screenshot(name) {
  shot += 1;
  await page.screenshot({ path: join(outDir, `${scenario}-${String(shot).padStart(2, '0')}-${name}.png`) });
}

const cells = () => page.locator('.jp-NotebookPanel:visible .jp-Notebook .jp-Cell');

/** The prompt text of cell i: "[ ]:", "[*]:" or "[3]:". */
async function prompt(i) {
  return (await cells().nth(i).locator('.jp-InputArea-prompt').textContent()) ?? '';
}

async function outputText(i) {
  return (await cells().nth(i).locator('.jp-OutputArea').innerText().catch(() => '')) ?? '';
}

/** Select cell i, run it with Shift+Enter; `during` is called every 100 ms until it has run. */
async function runCell(i, timeoutMs, during = null) {
  // JupyterLab virtualises off-screen cells: bring the cell into view before clicking its prompt.
  await cells().nth(i).evaluate(el => el.scrollIntoView({ block: 'center' }));
  await cells().nth(i).locator('.jp-InputArea-prompt').click();
  await page.keyboard.press('Shift+Enter');
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (during) {
      await during();
    }
    if (/\[\d+\]/.test(await prompt(i))) {
      result.outputs[i] = await outputText(i);
      return;
    }
    await page.waitForTimeout(100);
  }
  result.outputs[i] = await outputText(i);
  throw new Error(`cell ${i} did not finish within ${timeoutMs} ms; output:\n${result.outputs[i]}`);
}

async function text(selector) {
  return ((await page.locator(selector).first().textContent({ timeout: 5000 }).catch(() => '')) ?? '').trim();
}

async function number(selector) {
  const n = parseFloat((await text(selector)).replace(/[,%]/g, ''));
  return Number.isFinite(n) ? n : 0;
}

async function openNotebook() {
  // ?reset: a fresh workspace, so only this notebook is open
  await page.goto(`${baseUrl}/lab/tree/${notebook}?reset`, { waitUntil: 'domcontentloaded' });
  await page.waitForSelector('.jp-Notebook .jp-Cell', { timeout: 90000 });
  // Our status bar item follows the notebook's kernel: "waiting" means the kernel is up and the panel tried it.
  await page.waitForSelector('.sgl-status-item[data-state="waiting"]', { timeout: 90000 });
  result.statusBeforeLoad = await text('.sgl-status-item');
}

async function widgetsScenario() {
  await openNotebook();
  const lengths = new Set();
  await runCell(0, 60000);
  // The kernel thread streams for ~2 s after the cell returned: sample the text as it grows.
  const until = Date.now() + 30000;
  while (Date.now() < until && !(await page.locator('.sgl-token-stream .sgl-status[data-status="done"]').count())) {
    lengths.add((await text('.sgl-token-stream .sgl-text')).length);
    await page.waitForTimeout(50);
  }
  await page.waitForSelector('.sgl-token-stream .sgl-status[data-status="done"]', { timeout: 1000 });
  await page.waitForSelector('.sgl-radix-tree .sgl-node', { timeout: 30000 });
  result.streamLengths = [...lengths].sort((a, b) => a - b);
  result.streamText = await text('.sgl-token-stream .sgl-stream[data-name="answer"] .sgl-text');
  result.tokenSpans = await page.locator('.sgl-token-stream .sgl-token').count();
  result.finish = await text('.sgl-token-stream .sgl-finish');
  result.treeNodes = await page.locator('.sgl-radix-tree .sgl-node').count();
  result.hitNodes = await page.locator('.sgl-radix-tree .sgl-node.sgl-hit').count();
  result.treeHead = await text('.sgl-radix-tree .sgl-tree-head');
  result.tps = await text('.sgl-throughput .sgl-tps');
  result.polylines = await page.locator('.sgl-throughput polyline').count();
  // Chinese must really render: the text box is wider than a row of tofu would be is not checkable, but the
  // glyphs must come from a CJK font (Noto CJK is installed by the test setup).
  result.cjkFontWidth = await page.evaluate(() => {
    const el = document.querySelector('.sgl-token-stream .sgl-token');
    return el ? el.getBoundingClientRect().width : 0;
  });
  await screenshot('widgets-live');
  // Two-way trait: the logprob toggle in the page sets show_logprobs in the kernel.
  await page.locator('.sgl-token-stream .sgl-lp-toggle').check();
  await page.waitForSelector('.sgl-token-stream.sgl-show-lp', { timeout: 5000 });
  await runCell(1, 30000);
  await screenshot('widgets-logprobs');
}

async function magicsScenario() {
  await openNotebook();
  // %%sgl editing: the cell is marked and DSL words are emphasised; hovering `gen` shows its help.
  await page.waitForSelector('.jp-Notebook .sgl-cell .sgl-dsl-word', { timeout: 30000 });
  result.sglCells = await page.locator('.jp-Notebook .sgl-cell').count();
  result.dslWords = await page.locator('.jp-Notebook .sgl-cell .sgl-dsl-word').allTextContents();
  await page.locator('.sgl-cell .sgl-dsl-word[data-sgl-word="gen"]').first().hover();
  result.tooltip = await page
    .waitForSelector('.sgl-dsl-tooltip', { timeout: 5000 })
    .then(el => el.textContent())
    .catch(() => '');
  await screenshot('sgl-cell-tooltip');
  await page.mouse.move(5, 5);

  // Completion in a %%sgl cell (the last cell, never run): Tab after "sel" offers the DSL's select. The
  // kernel has no sgl names yet (no %load_ext), so the item comes from the extension's provider.
  const last = cells().last();
  await last.locator('.cm-content').click();
  await page.keyboard.press('Control+End');
  await page.keyboard.press('Tab');
  result.completions = await page
    .waitForSelector('.jp-Completer .jp-Completer-item', { timeout: 10000 })
    .then(() => page.locator('.jp-Completer .jp-Completer-item .jp-Completer-match').allTextContents())
    .catch(() => []);
  await screenshot('sgl-completion');
  await page.keyboard.press('Escape');
  await page.keyboard.press('Escape');

  // Open the engine panel in the left sidebar.
  await page.locator('.jp-SideBar [data-id="sgl-jupyter-engine-panel"]').click();
  await page.waitForSelector('#sgl-jupyter-engine-panel', { state: 'visible', timeout: 10000 });

  await runCell(0, 60000); // %load_ext sgl_jupyter
  await page.waitForSelector('.sgl-status-item[data-state="connected"]', { timeout: 30000 });
  result.statusAfterLoadExt = await text('.sgl-status-item');

  await runCell(1, 240000); // %sgl_load
  await page.waitForFunction(() => {
    const el = document.querySelector('.sgl-panel-kv_total');
    return el && parseFloat(el.textContent) > 0;
  }, null, { timeout: 30000 });
  result.panelAfterLoad = {
    model: await text('.sgl-panel-model'),
    device: await text('.sgl-panel-device'),
    kv_total: await number('.sgl-panel-kv_total')
  };
  await screenshot('model-loaded');

  // The %%sgl cell: watch the stream grow and the panel's tokens/s while it runs.
  const lengths = new Set();
  let maxTps = 0;
  let maxRunning = 0;
  let maxKvUsed = 0;
  await runCell(2, 180000, async () => {
    lengths.add((await text('.sgl-token-stream .sgl-stream[data-name="answer"] .sgl-text')).length);
    maxTps = Math.max(maxTps, await number('.sgl-panel-tokens_per_s'));
    maxRunning = Math.max(maxRunning, await number('.sgl-panel-running'));
    maxKvUsed = Math.max(maxKvUsed, await number('.sgl-panel-kv_used'));
  });
  await page.waitForSelector('.sgl-token-stream .sgl-status[data-status="done"]', { timeout: 30000 });
  result.streamLengths = [...lengths].sort((a, b) => a - b);
  result.streamText = await text('.sgl-token-stream .sgl-stream[data-name="answer"] .sgl-text');
  result.streamFinish = await text('.sgl-token-stream .sgl-stream[data-name="answer"] .sgl-finish');
  result.maxPanelTps = maxTps;
  result.maxPanelRunning = maxRunning;
  result.maxPanelKvUsed = maxKvUsed;
  await screenshot('sgl-cell-streamed');

  await runCell(3, 60000); // %sgl_cache
  await page.waitForSelector('.jp-Notebook .sgl-radix-tree .sgl-node', { timeout: 30000 });
  result.treeNodes = await page.locator('.jp-Notebook .sgl-radix-tree .sgl-node').count();
  result.treeHead = await text('.jp-Notebook .sgl-radix-tree .sgl-tree-head');

  await runCell(4, 30000); // the kernel's own view of the final state
  // select scored its choices on the cached prompt: the kernel's next push shows a non-zero hit rate.
  await page
    .waitForFunction(() => parseFloat(document.querySelector('.sgl-panel-cache_hit_rate')?.textContent) > 0, null, {
      timeout: 10000
    })
    .catch(() => undefined);
  result.panel = {
    kv_used: await number('.sgl-panel-kv_used'),
    kv_total: await number('.sgl-panel-kv_total'),
    cache_hit_rate: await number('.sgl-panel-cache_hit_rate'),
    tokens_per_s: await number('.sgl-panel-tokens_per_s')
  };
  result.status = await text('.sgl-status-item');
  await screenshot('radix-cache');

  // The panel's own radix tree view (asks the kernel over the comm).
  await page.locator('.sgl-panel-tree').click();
  await page.waitForSelector('.sgl-radix-panel .sgl-node', { timeout: 30000 });
  result.panelTreeNodes = await page.locator('.sgl-radix-panel .sgl-node').count();
  await screenshot('panel-radix-view');

  // Flush from the panel: the cache empties, and the live widgets follow.
  await page.locator('.sgl-panel-flush').click();
  await page.waitForFunction(
    () => /flushed|refused/.test(document.querySelector('.sgl-panel-message')?.textContent ?? ''),
    null,
    { timeout: 30000 }
  );
  result.flushMessage = await text('.sgl-panel-message');
  await page
    .waitForSelector('.jp-Notebook .sgl-radix-tree .sgl-tree-empty', { timeout: 15000 })
    .catch(() => undefined);
  result.treeNodesAfterFlush = await page.locator('.jp-Notebook .sgl-radix-tree .sgl-node').count();
  await page.waitForSelector('.sgl-radix-panel .sgl-tree-empty', { timeout: 15000 }).catch(() => undefined);
  result.panelTreeNodesAfterFlush = await page.locator('.sgl-radix-panel .sgl-node').count();
  await screenshot('after-flush');
}

/** Index of the first code cell whose prompt is "[*]" (running or queued), or -1. */
async function busyCell() {
  return page.evaluate(() => {
    const all = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')];
    return all.findIndex(c => (c.querySelector('.jp-InputArea-prompt')?.textContent ?? '').includes('[*]'));
  });
}

/** Run All on the notebook (a quickstart as a newcomer runs it), watching the engine panel while cells run. */
async function quickstartScenario() {
  await openNotebook();
  await page.waitForTimeout(1500); // the kernel's info has arrived: a notebook JupyterLab rewrites is dirty now
  result.dirtyOnOpen = await page.locator('.lm-TabBar-tab.jp-mod-dirty').count();
  result.kernelName = await text('.jp-NotebookPanel-toolbar .jp-KernelName, .jp-Toolbar-kernelName');
  await page.locator('.jp-SideBar [data-id="sgl-jupyter-engine-panel"]').click();
  await page.waitForSelector('#sgl-jupyter-engine-panel', { state: 'visible', timeout: 10000 });
  await screenshot('quickstart-opened');

  await page.locator('.lm-MenuBar-itemLabel', { hasText: /^Run$/ }).click();
  await page.locator('.lm-Menu-itemLabel', { hasText: /^Run All Cells$/ }).click();
  const total = await cells().count();
  const lastCode = await page.evaluate(() => {
    const all = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')];
    return all.map((c, i) => (c.classList.contains('jp-CodeCell') ? i : -1)).filter(i => i >= 0).pop();
  });
  result.samples = [];
  let shotDuring = false;
  const deadline = Date.now() + 300000;
  while (Date.now() < deadline) {
    const busy = await busyCell();
    const sample = {
      busy,
      model: await text('.sgl-panel-model'),
      tps: await number('.sgl-panel-tokens_per_s'),
      running: await number('.sgl-panel-running'),
      status: await text('.sgl-status-item')
    };
    result.samples.push(sample);
    if (!shotDuring && sample.tps > 0 && busy >= 0) {
      shotDuring = true;
      await screenshot('quickstart-running-panel-live');
    }
    if (busy < 0 && /\[\d+\]/.test(await prompt(lastCode))) {
      break;
    }
    await page.waitForTimeout(250);
  }
  if (!/\[\d+\]/.test(await prompt(lastCode))) {
    throw new Error(`Run All did not finish; last samples ${JSON.stringify(result.samples.slice(-3))}`);
  }
  await page.waitForTimeout(1500); // the chart's last push (the engine went idle)
  for (let i = 0; i < total; i++) {
    const cell = cells().nth(i);
    if (await cell.evaluate(el => el.classList.contains('jp-CodeCell'))) {
      result.outputs[i] = await outputText(i);
    }
  }
  // how the %%sgl transcript (final text) and the token stream wrap: at spaces, not inside words
  result.wrapStyles = await page.evaluate(() =>
    ['.sgl-final-text', '.sgl-token-stream .sgl-text'].map(sel => {
      const el = document.querySelector(sel);
      const st = el ? getComputedStyle(el) : null;
      return { sel, found: !!el, wordBreak: st?.wordBreak, overflowWrap: st?.overflowWrap, whiteSpace: st?.whiteSpace };
    })
  );
  result.dirtyAfterRun = await page.locator('.lm-TabBar-tab.jp-mod-dirty').count(); // outputs changed: dirty now
  result.stderrOutputs = await page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').count();
  // the last chart (%sgl_stats) and the DataFrame beside it
  const chart = page.locator('.jp-Notebook .sgl-throughput').last();
  await chart.evaluate(el => el.scrollIntoView({ block: 'center' }));
  result.chart = {
    tps: await chart.locator('.sgl-tps').textContent(),
    hitRate: await chart.locator('.sgl-hit-rate').textContent(),
    generated: await chart.locator('.sgl-generated').textContent(),
    points: ((await chart.locator('.sgl-series-tokens_per_s').getAttribute('points')) ?? '').trim().split(/\s+/).filter(Boolean).length
  };
  result.table = await page.evaluate(() => {
    const cellsEls = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')];
    const withChart = cellsEls.filter(c => c.querySelector('.sgl-throughput')).pop();
    const rows = {};
    for (const tr of withChart?.querySelectorAll('table.dataframe tbody tr') ?? []) {
      rows[tr.querySelector('th')?.textContent?.trim() ?? ''] = tr.querySelector('td')?.textContent?.trim() ?? '';
    }
    return rows;
  });
  await screenshot('quickstart-stats-chart');
  await page.locator('.jp-Notebook .sgl-radix-tree').last().evaluate(el => el.scrollIntoView({ block: 'center' }));
  await screenshot('quickstart-cache-tree');
}

try {
  if (scenario === 'quickstart') {
    await quickstartScenario();
  } else if (scenario === 'widgets') {
    await widgetsScenario();
  } else if (scenario === 'magics') {
    await magicsScenario();
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
} catch (err) {
  result.error = String(err?.stack ?? err);
  await screenshot('failure').catch(() => undefined);
} finally {
  await browser.close();
}
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(result.error ? 1 : 0);
