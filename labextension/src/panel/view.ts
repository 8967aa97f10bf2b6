/**
 * The engine panel's widgets: the left-sidebar panel (numbers, tokens/s sparkline, flush and radix-tree
 * buttons), the status bar item, and the radix tree view the panel opens in the main area.
 * Numbers carry `class="sgl-panel-<key>"` (widget contract; the e2e test reads them).
 */
import { Widget } from '@lumino/widgets';

import { RadixTreeDrawing } from '../widgets/radix_tree';
import { PanelConnection } from './connection';
import { PanelModel, PanelStats, kvFraction, shortModelName, statusText } from './model';

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls = '', text = ''): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (cls) {
    node.className = cls;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

interface Row {
  key: keyof PanelStats | 'kv';
  label: string;
  format: (s: PanelStats) => string;
}

const ROWS: Row[] = [
  { key: 'model', label: 'Model', format: s => shortModelName(s.model) || '\u2014' },
  { key: 'backend', label: 'Backend', format: s => s.backend ?? '\u2014' },
  { key: 'device', label: 'Device', format: s => s.device || '\u2014' },
  { key: 'dtype', label: 'Dtype', format: s => s.dtype || '\u2014' },
  { key: 'kv_used', label: 'KV used', format: s => String(s.kv_used) },
  { key: 'kv_total', label: 'KV capacity', format: s => String(s.kv_total) },
  { key: 'running', label: 'Running', format: s => String(s.running) },
  { key: 'queued', label: 'Queued', format: s => String(s.queued) },
  { key: 'cache_hit_rate', label: 'Cache hit rate', format: s => `${(100 * s.cache_hit_rate).toFixed(1)}%` },
  { key: 'tokens_per_s', label: 'Tokens/s', format: s => s.tokens_per_s.toFixed(1) }
];

const TIPS: Partial<Record<string, string>> = {
  kv_used: 'KV cache slots (tokens) held by running requests',
  kv_total: 'KV cache capacity in tokens',
  running: 'requests being decoded',
  queued: 'requests waiting for KV space',
  cache_hit_rate: 'share of prompt tokens served from the radix cache',
  tokens_per_s: 'recent generation throughput'
};

/** An SVG polyline of recent tokens/s values. */
export function sparklinePoints(values: readonly number[], width: number, height: number): string {
  if (!values.length) {
    return '';
  }
  const max = Math.max(1e-9, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  return values
    .map((v, i) => `${(i * step).toFixed(1)},${(height - (Math.max(0, v) / max) * (height - 2) - 1).toFixed(1)}`)
    .join(' ');
}

/** A Lumino widget that follows the panel model: `onModelChanged` runs after every change. */
abstract class ModelView extends Widget {
  private readonly unsubscribe: () => void;

  constructor(protected readonly model: PanelModel) {
    super();
    this.unsubscribe = model.subscribe(() => this.onModelChanged());
  }

  dispose(): void {
    this.unsubscribe();
    super.dispose();
  }

  protected abstract onModelChanged(): void;
}

export class EnginePanel extends ModelView {
  private readonly stateEl: HTMLDivElement;
  private readonly values = new Map<string, HTMLElement>();
  private readonly kvBar: HTMLDivElement;
  private readonly spark: SVGPolylineElement;
  private readonly messageEl: HTMLDivElement;
  private readonly flushButton: HTMLButtonElement;
  private readonly treeButton: HTMLButtonElement;

  constructor(
    model: PanelModel,
    private readonly connection: PanelConnection,
    private readonly openTree: () => void
  ) {
    super(model);
    this.id = 'sgl-jupyter-engine-panel';
    this.addClass('sgl-engine-panel');
    this.title.caption = 'SGL engine';

    const root = this.node;
    root.appendChild(el('h3', 'sgl-panel-title', 'SGL engine'));
    this.stateEl = el('div', 'sgl-panel-state');
    root.appendChild(this.stateEl);

    const table = el('table', 'sgl-panel-table');
    for (const row of ROWS) {
      const tr = el('tr');
      const th = el('th', '', row.label);
      th.title = TIPS[row.key] ?? '';
      tr.appendChild(th);
      const td = el('td');
      const value = el('span', `sgl-panel-${row.key}`);
      td.appendChild(value);
      tr.appendChild(td);
      table.appendChild(tr);
      this.values.set(row.key, value);
    }
    root.appendChild(table);

    const kv = el('div', 'sgl-panel-kvbar');
    kv.title = 'KV cache usage';
    this.kvBar = el('div');
    kv.appendChild(this.kvBar);
    root.appendChild(kv);

    const svgNs = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(svgNs, 'svg');
    svg.setAttribute('viewBox', '0 0 200 40');
    svg.setAttribute('class', 'sgl-panel-spark');
    this.spark = document.createElementNS(svgNs, 'polyline') as SVGPolylineElement;
    this.spark.setAttribute('fill', 'none');
    svg.appendChild(this.spark);
    root.appendChild(svg);

    const buttons = el('div', 'sgl-panel-buttons');
    this.flushButton = el('button', 'jp-mod-styled sgl-panel-flush', 'Flush cache');
    this.flushButton.title = 'Empty the radix (prefix) cache; refused while requests run';
    this.flushButton.addEventListener('click', () => {
      this.model.setMessage(this.connection.flush() ? 'flushing\u2026' : 'not connected');
    });
    this.treeButton = el('button', 'jp-mod-styled sgl-panel-tree', 'Radix tree');
    this.treeButton.title = 'Open a live view of the radix cache tree';
    this.treeButton.addEventListener('click', () => this.openTree());
    const refresh = el('button', 'jp-mod-styled sgl-panel-refresh', 'Refresh');
    refresh.addEventListener('click', () => this.connection.refresh());
    buttons.append(this.flushButton, this.treeButton, refresh);
    root.appendChild(buttons);

    this.messageEl = el('div', 'sgl-panel-message');
    root.appendChild(this.messageEl);
    this.draw();
  }

  protected onModelChanged(): void {
    this.draw();
  }

  draw(): void {
    const { state, stats } = this.model;
    this.node.dataset.state = state;
    this.node.dataset.loaded = String(stats.loaded);
    const notices: Record<string, string> = {
      'no-kernel': 'Open a notebook with a Python kernel.',
      waiting: `Kernel ${this.model.kernelName}: run %load_ext sgl_jupyter.`,
      connected: stats.loaded ? `Kernel ${this.model.kernelName}: engine ready.` : 'No model: run %sgl_load.'
    };
    this.stateEl.textContent = notices[state];
    for (const row of ROWS) {
      this.values.get(row.key)!.textContent = state === 'connected' ? row.format(stats) : '\u2014';
    }
    this.kvBar.style.width = `${(100 * kvFraction(stats)).toFixed(1)}%`;
    this.spark.setAttribute('points', sparklinePoints(this.model.history, 200, 40));
    const live = state === 'connected';
    this.flushButton.disabled = !live || !stats.loaded;
    this.treeButton.disabled = !live || stats.backend !== 'engine';
    this.messageEl.textContent = this.model.message;
  }
}

/** The status bar item: one line, click to open the panel. */
export class EngineStatusItem extends ModelView {
  constructor(model: PanelModel, onClick: () => void) {
    super(model);
    this.addClass('sgl-status-item');
    this.node.title = 'sgl_jupyter engine (click for the panel)';
    this.node.addEventListener('click', onClick);
    this.draw();
  }

  protected onModelChanged(): void {
    this.draw();
  }

  draw(): void {
    this.node.textContent = statusText(this.model.state, this.model.stats);
    this.node.dataset.state = this.model.state;
  }
}

/** The radix tree view opened from the panel: asks the kernel for `cache_snapshot()` as stats change. */
export class RadixTreePanel extends ModelView {
  private readonly drawing = new RadixTreeDrawing();
  private readonly statusEl: HTMLDivElement;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private inFlight = false;
  private lastKey = '';

  constructor(model: PanelModel, private readonly connection: PanelConnection) {
    super(model);
    this.id = `sgl-jupyter-radix-tree-${Date.now()}`;
    this.addClass('sgl-radix-panel');
    this.title.label = 'Radix tree';
    this.title.closable = true;
    this.statusEl = el('div', 'sgl-radix-panel-status');
    this.node.append(this.statusEl, this.drawing.root);
    this.fetch();
  }

  dispose(): void {
    if (this.timer) {
      clearTimeout(this.timer);
    }
    super.dispose();
  }

  protected onModelChanged(): void {
    this.schedule();
  }

  /** What moves when the cache may have changed: requests, KV, hit rate, throughput, flushes. */
  private cacheKey(): string {
    const s = this.model.stats;
    return [s.kv_used, s.running, s.queued, s.cache_hit_rate, s.tokens_per_s, this.model.flushes].join('/');
  }

  /** Refetch at most once a second, and only when the numbers moved. */
  private schedule(): void {
    const key = this.cacheKey();
    if (key === this.lastKey || this.timer || this.isDisposed) {
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = null;
      this.fetch();
    }, 1000);
  }

  async fetch(): Promise<void> {
    if (this.inFlight || this.isDisposed) {
      return;
    }
    this.inFlight = true;
    this.lastKey = this.cacheKey();
    try {
      const tree = await this.connection.requestTree();
      this.statusEl.textContent = '';
      this.drawing.draw(tree as any, [], 300);
    } catch (err) {
      this.statusEl.textContent = String((err as Error).message ?? err);
    } finally {
      this.inFlight = false;
    }
  }
}
