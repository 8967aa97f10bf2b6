/**
 * What the engine panel and the status bar item show, independent of JupyterLab: the latest stats the
 * kernel pushed over comm `sgl_jupyter.panel`, the connection state, and a short tokens/s history.
 */

/** `{"type": "stats", "data": ...}` from the kernel (widget contract). */
export interface PanelStats {
  loaded: boolean;
  model: string;
  device: string;
  dtype: string;
  kv_used: number;
  kv_total: number;
  running: number;
  queued: number;
  cache_hit_rate: number;
  tokens_per_s: number;
  backend: 'engine' | 'endpoint' | null;
}

/** no-kernel: no notebook/kernel; waiting: kernel without `%load_ext sgl_jupyter`; connected: comm open. */
export type ConnectionState = 'no-kernel' | 'waiting' | 'connected';

export const EMPTY_STATS: PanelStats = {
  loaded: false,
  model: '',
  device: '',
  dtype: '',
  kv_used: 0,
  kv_total: 0,
  running: 0,
  queued: 0,
  cache_hit_rate: 0,
  tokens_per_s: 0,
  backend: null
};

const HISTORY = 120;

/** Coerce what came over the wire into PanelStats (missing or malformed fields become defaults). */
export function parseStats(data: unknown): PanelStats {
  const src = (data && typeof data === 'object' ? data : {}) as Record<string, unknown>;
  const num = (k: keyof PanelStats) => {
    const n = Number(src[k]);
    return Number.isFinite(n) ? n : 0;
  };
  const str = (k: keyof PanelStats) => (typeof src[k] === 'string' ? (src[k] as string) : '');
  const backend = src.backend === 'engine' || src.backend === 'endpoint' ? src.backend : null;
  return {
    loaded: Boolean(src.loaded),
    model: str('model'),
    device: str('device'),
    dtype: str('dtype'),
    kv_used: num('kv_used'),
    kv_total: num('kv_total'),
    running: num('running'),
    queued: num('queued'),
    cache_hit_rate: num('cache_hit_rate'),
    tokens_per_s: num('tokens_per_s'),
    backend
  };
}

/** KV usage as a 0..1 fraction (0 when the total is unknown). */
export function kvFraction(stats: PanelStats): number {
  return stats.kv_total > 0 ? Math.min(1, Math.max(0, stats.kv_used / stats.kv_total)) : 0;
}

/** The model's short name: last path component of a model path. */
export function shortModelName(model: string): string {
  const parts = model.replace(/[\\/]+$/, '').split(/[\\/]/);
  return parts[parts.length - 1] || model;
}

/** One line for the status bar. */
export function statusText(state: ConnectionState, stats: PanelStats): string {
  if (state === 'no-kernel') {
    return 'SGL: no kernel';
  }
  if (state === 'waiting') {
    return 'SGL: %load_ext sgl_jupyter';
  }
  if (!stats.loaded) {
    return 'SGL: no model';
  }
  const kv = stats.kv_total > 0 ? ` \u00b7 KV ${(100 * kvFraction(stats)).toFixed(0)}%` : '';
  return `SGL ${shortModelName(stats.model)} \u00b7 ${stats.tokens_per_s.toFixed(1)} tok/s${kv}`;
}

type Listener = () => void;

export class PanelModel {
  private _stats: PanelStats = { ...EMPTY_STATS };
  private _state: ConnectionState = 'no-kernel';
  private _kernelName = '';
  private _message = '';
  private _flushes = 0;
  private readonly _history: number[] = [];
  private readonly listeners = new Set<Listener>();

  get stats(): PanelStats {
    return this._stats;
  }
  get state(): ConnectionState {
    return this._state;
  }
  /** Display name of the notebook/kernel the panel follows. */
  get kernelName(): string {
    return this._kernelName;
  }
  /** Last notice from the kernel (flush result, error), shown under the numbers. */
  get message(): string {
    return this._message;
  }
  /** How many cache flushes the kernel confirmed (views of the cache refetch when it moves). */
  get flushes(): number {
    return this._flushes;
  }
  /** Recent tokens/s values, oldest first. */
  get history(): readonly number[] {
    return this._history;
  }

  setStats(data: unknown): void {
    this._stats = parseStats(data);
    this._history.push(this._stats.tokens_per_s);
    if (this._history.length > HISTORY) {
      this._history.splice(0, this._history.length - HISTORY);
    }
    this.emit();
  }

  setState(state: ConnectionState, kernelName = this._kernelName): void {
    if (state === this._state && kernelName === this._kernelName) {
      return;
    }
    this._state = state;
    this._kernelName = kernelName;
    if (state !== 'connected') {
      this._stats = { ...EMPTY_STATS };
      this._history.length = 0;
    }
    this.emit();
  }

  noteFlushed(): void {
    this._flushes += 1;
    this.emit();
  }

  setMessage(message: string): void {
    this._message = message;
    this.emit();
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(): void {
    for (const listener of [...this.listeners]) {
      listener();
    }
  }
}
