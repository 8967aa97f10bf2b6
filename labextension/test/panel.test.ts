import { Signal } from '@lumino/signaling';
import { describe, expect, it } from 'vitest';

import { PanelConnection, PanelKernel, TARGET } from '../src/panel/connection';
import { EMPTY_STATS, PanelModel, parseStats, statusText } from '../src/panel/model';
import { EnginePanel, sparklinePoints } from '../src/panel/view';

/** A kernel connection double: records comm traffic; the test plays the kernel's part. */
class FakeComm {
  opened: unknown[] = [];
  sent: unknown[] = [];
  closed = false;
  isDisposed = false;
  onMsg: (msg: any) => void = () => undefined;
  onClose: (msg: any) => void = () => undefined;
  constructor(readonly targetName: string) {}
  open(data: unknown) {
    this.opened.push(data);
    return { done: Promise.resolve() };
  }
  send(data: unknown) {
    this.sent.push(data);
    return { done: Promise.resolve() };
  }
  close() {
    this.closed = true;
    this.isDisposed = true;
  }
  /** The kernel sends `data` on this comm. */
  receive(data: unknown) {
    this.onMsg({ content: { data } });
  }
  /** The kernel closes the comm (e.g. no such target). */
  kernelClose() {
    this.isDisposed = true;
    this.onClose({ content: { data: {} } });
  }
}

class FakeKernel implements PanelKernel {
  isDisposed = false;
  name = 'python3';
  comms: FakeComm[] = [];
  statusChanged = new Signal<any, any>(this);
  iopubMessage = new Signal<any, any>(this);
  targets = new Map<string, (comm: any, msg: any) => void>();
  createComm(target: string): any {
    const comm = new FakeComm(target);
    this.comms.push(comm);
    return comm;
  }
  registerCommTarget(target: string, callback: (comm: any, msg: any) => void) {
    this.targets.set(target, callback);
  }
  removeCommTarget(target: string, callback: (comm: any, msg: any) => void) {
    if (this.targets.get(target) === callback) {
      this.targets.delete(target);
    }
  }
  /** The kernel opens a comm to `target` (as `%load_ext sgl_jupyter` does), carrying `data`. */
  kernelOpen(target: string, data: unknown): FakeComm {
    const comm = new FakeComm(target);
    this.targets.get(target)!(comm, { content: { comm_id: 'k1', target_name: target, data } });
    return comm;
  }
  idleAfter(msgType: string) {
    this.iopubMessage.emit({ header: { msg_type: 'status' }, parent_header: { msg_type: msgType }, content: { execution_state: 'idle' } });
  }
}

/** A panel model and connection following a fresh fake kernel. */
function following(label = '') {
  const model = new PanelModel();
  const conn = new PanelConnection(model);
  const kernel = new FakeKernel();
  conn.setKernel(kernel, label);
  return { model, conn, kernel };
}

const STATS = {
  loaded: true, model: '/cache/SmolLM2-135M-Instruct', device: 'cpu', dtype: 'float32', kv_used: 120, kv_total: 4096,
  running: 1, queued: 2, cache_hit_rate: 0.42, tokens_per_s: 31.4159, backend: 'engine'
};

describe('panel model', () => {
  it('parses stats defensively', () => {
    expect(parseStats(null)).toEqual(EMPTY_STATS);
    const parsed = parseStats({ ...STATS, kv_used: 'x', backend: 'weird' });
    expect(parsed.kv_used).toBe(0);
    expect(parsed.backend).toBeNull();
    expect(parsed.tokens_per_s).toBeCloseTo(31.4159);
  });

  it('summarises the state in one status bar line', () => {
    expect(statusText('waiting', EMPTY_STATS)).toBe('SGL: %load_ext sgl_jupyter');
    expect(statusText('connected', EMPTY_STATS)).toBe('SGL: no model');
    expect(statusText('connected', parseStats(STATS))).toBe('SGL SmolLM2-135M-Instruct \u00b7 31.4 tok/s \u00b7 KV 3%');
  });

  it('draws a sparkline inside its box', () => {
    const pts = sparklinePoints([0, 5, 10], 200, 40).split(' ').map(p => p.split(',').map(Number));
    expect(pts[0][0]).toBe(0);
    expect(pts[2][0]).toBe(200);
    expect(pts[2][1]).toBeCloseTo(1);
    expect(pts[0][1]).toBeCloseTo(39);
  });
});

describe('panel connection', () => {
  it('opens a comm to sgl_jupyter.panel and shows the stats the kernel pushes', () => {
    const { model, conn, kernel } = following('nb.ipynb');
    expect(kernel.comms.length).toBe(1);
    expect(kernel.comms[0].targetName).toBe(TARGET);
    expect(model.state).toBe('waiting');
    kernel.comms[0].receive({ type: 'stats', data: STATS });
    expect(model.state).toBe('connected');
    expect(model.stats.kv_total).toBe(4096);
    expect(conn.connected).toBe(true);
  });

  it('adopts the comm the kernel opens at %load_ext while its own comm_open is still queued', () => {
    const { model, conn, kernel } = following('nb.ipynb');
    const ours = kernel.comms[0]; // Run All: the kernel handles this only after the last cell
    expect(kernel.targets.has(TARGET)).toBe(true);
    const theirs = kernel.kernelOpen(TARGET, { type: 'stats', data: { ...STATS, loaded: false, model: '' } });
    expect(ours.closed).toBe(true);
    expect(model.state).toBe('connected');
    expect(model.stats.loaded).toBe(false);
    theirs.receive({ type: 'stats', data: STATS }); // pushed while %sgl_load's cell still runs
    expect(model.stats.model).toBe(STATS.model);
    ours.kernelClose(); // the stale comm's close changes nothing
    expect(conn.connected).toBe(true);
    expect(conn.flush()).toBe(true);
    expect(theirs.sent).toEqual([{ type: 'flush' }]);
    kernel.idleAfter('execute_request'); // connected: no new comm_open
    expect(kernel.comms.length).toBe(1);
    conn.setKernel(null);
    expect(kernel.targets.has(TARGET)).toBe(false);
    expect(theirs.closed).toBe(true);
  });

  it('retries after a cell finishes when the target was missing, not after its own comm_open', () => {
    const { model, conn, kernel } = following();
    kernel.comms[0].kernelClose(); // no %load_ext yet
    kernel.idleAfter('comm_open');
    expect(kernel.comms.length).toBe(1);
    kernel.idleAfter('execute_request');
    expect(kernel.comms.length).toBe(2);
    kernel.idleAfter('execute_request'); // still opening: no second attempt in flight
    expect(kernel.comms.length).toBe(2);
    kernel.comms[1].receive({ type: 'stats', data: STATS });
    expect(model.state).toBe('connected');
  });

  it('sends flush and answers tree requests; drops the comm when the kernel restarts', async () => {
    const { model, conn, kernel } = following();
    const comm = kernel.comms[0];
    comm.receive({ type: 'stats', data: STATS });
    expect(conn.flush()).toBe(true);
    comm.receive({ type: 'flushed', data: { ok: true } });
    expect(model.message).toBe('cache flushed');
    expect(model.flushes).toBe(1);
    comm.receive({ type: 'flushed', data: { ok: false } });
    expect(model.message).toMatch(/refused/);
    expect(model.flushes).toBe(1);
    const pending = conn.requestTree();
    expect(comm.sent).toEqual([{ type: 'flush' }, { type: 'tree' }]);
    comm.receive({ type: 'tree', data: { nodes: [], version: 3 } });
    await expect(pending).resolves.toEqual({ nodes: [], version: 3 });
    kernel.statusChanged.emit('restarting');
    expect(comm.closed).toBe(true);
    expect(model.state).toBe('waiting');
    expect(model.stats.loaded).toBe(false);
    await expect(conn.requestTree()).rejects.toThrow(/load_ext/);
  });

  it('follows a new kernel and forgets the old one', () => {
    const model = new PanelModel();
    const conn = new PanelConnection(model);
    const a = new FakeKernel();
    const b = new FakeKernel();
    conn.setKernel(a);
    conn.setKernel(b);
    expect(a.comms[0].closed).toBe(true);
    a.idleAfter('execute_request');
    expect(a.comms.length).toBe(1);
    expect(b.comms.length).toBe(1);
    conn.setKernel(null);
    expect(model.state).toBe('no-kernel');
  });
});

describe('engine panel view', () => {
  it('shows every number with its sgl-panel-<key> class and enables the buttons once a model is loaded', () => {
    const { model, conn, kernel } = following('demo');
    const panel = new EnginePanel(model, conn, () => undefined);
    const q = (k: string) => panel.node.querySelector(`.sgl-panel-${k}`)!.textContent;
    expect(q('tokens_per_s')).toBe('\u2014');
    expect((panel.node.querySelector('.sgl-panel-flush') as HTMLButtonElement).disabled).toBe(true);
    kernel.comms[0].receive({ type: 'stats', data: STATS });
    expect(q('tokens_per_s')).toBe('31.4');
    expect(q('kv_total')).toBe('4096');
    expect(q('cache_hit_rate')).toBe('42.0%');
    expect(q('model')).toBe('SmolLM2-135M-Instruct');
    expect((panel.node.querySelector('.sgl-panel-flush') as HTMLButtonElement).disabled).toBe(false);
    (panel.node.querySelector('.sgl-panel-flush') as HTMLButtonElement).click();
    expect(kernel.comms[0].sent).toEqual([{ type: 'flush' }]);
    panel.dispose();
  });
});
