/**
 * The front-end end of comm `sgl_jupyter.panel` (kernel side: sgl_jupyter/jupyter/panel_comm.py).
 *
 * Two ways in. The kernel opens the comm itself at `%load_ext sgl_jupyter` (we register the target on every
 * kernel we follow): that reaches us at once on iopub, so the panel and the status bar fill in while Run All
 * is still executing cells. We also open one from here (a page reloaded after `%load_ext`); the kernel handles
 * that comm_open only between cells, and may close it at once (no `%load_ext` yet): we then try again after
 * each finished cell execution, never on a timer. The newest comm wins; an older one is closed.
 */
import type { Kernel, KernelMessage } from '@jupyterlab/services';
import type { ISignal } from '@lumino/signaling';

import { PanelModel } from './model';

export const TARGET = 'sgl_jupyter.panel';

/** The parts of `Kernel.IKernelConnection` the panel uses (what unit tests fake). */
export interface PanelKernel {
  readonly isDisposed: boolean;
  readonly name: string;
  createComm(targetName: string, commId?: string): Kernel.IComm;
  registerCommTarget(
    targetName: string,
    callback: (comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg) => void | PromiseLike<void>
  ): void;
  removeCommTarget(
    targetName: string,
    callback: (comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg) => void | PromiseLike<void>
  ): void;
  readonly statusChanged: ISignal<any, Kernel.Status>;
  readonly iopubMessage: ISignal<any, KernelMessage.IIOPubMessage>;
}

export class PanelConnection {
  private kernel: PanelKernel | null = null;
  private comm: Kernel.IComm | null = null;
  private opening = false;
  private treeWaiters: Array<{ resolve: (tree: unknown) => void; reject: (err: Error) => void }> = [];

  constructor(readonly model: PanelModel) {}

  /** Follow `kernel` (null: no notebook or no kernel). */
  setKernel(kernel: PanelKernel | null, label = ''): void {
    if (kernel === this.kernel) {
      return;
    }
    if (this.kernel) {
      this.kernel.statusChanged.disconnect(this.onStatus, this);
      this.kernel.iopubMessage.disconnect(this.onIopub, this);
      if (!this.kernel.isDisposed) {
        this.kernel.removeCommTarget(TARGET, this.onKernelOpen);
      }
    }
    this.dropComm();
    this.kernel = kernel;
    if (!kernel) {
      this.model.setState('no-kernel', '');
      return;
    }
    this.model.setState('waiting', label || kernel.name);
    kernel.statusChanged.connect(this.onStatus, this);
    kernel.iopubMessage.connect(this.onIopub, this);
    kernel.registerCommTarget(TARGET, this.onKernelOpen);
    this.open();
  }

  get connected(): boolean {
    return this.comm !== null && this.model.state === 'connected';
  }

  /** Open the comm if it is not open (no-op while an attempt is under way). */
  open(): void {
    const kernel = this.kernel;
    if (!kernel || kernel.isDisposed || this.comm || this.opening) {
      return;
    }
    let comm: Kernel.IComm;
    try {
      comm = kernel.createComm(TARGET);
    } catch (err) {
      console.warn('sgl-jupyter: cannot create panel comm', err);
      return;
    }
    this.opening = true;
    this.comm = comm;
    this.wire(comm);
    try {
      const future = comm.open({ type: 'hello' });
      future?.done?.catch(() => undefined);
    } catch (err) {
      this.comm = null;
      this.opening = false;
    }
  }

  /** The kernel opened the comm (at `%load_ext`): adopt it, closing ours, and show what it carried. */
  private readonly onKernelOpen = (comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg): void => {
    const old = this.comm;
    this.comm = comm;
    this.opening = false;
    if (old && old !== comm && !old.isDisposed) {
      try {
        old.close();
      } catch {
        // already gone
      }
    }
    this.wire(comm);
    this.onMessage(comm, (msg?.content?.data ?? {}) as Record<string, unknown>);
  };

  private wire(comm: Kernel.IComm): void {
    comm.onMsg = msg => this.onMessage(comm, msg.content.data as Record<string, unknown>);
    comm.onClose = () => {
      if (this.comm === comm) {
        this.comm = null;
        this.opening = false;
        if (this.kernel) {
          this.model.setState('waiting');
        }
      }
    };
  }

  send(data: Record<string, unknown>): boolean {
    if (!this.comm || this.comm.isDisposed) {
      return false;
    }
    this.comm.send(data as any);
    return true;
  }

  flush(): boolean {
    return this.send({ type: 'flush' });
  }

  refresh(): boolean {
    return this.send({ type: 'refresh' });
  }

  /** Ask the kernel for `cache_snapshot()`; resolves with it (null: no in-process engine). */
  requestTree(timeoutMs = 15000): Promise<unknown> {
    if (!this.send({ type: 'tree' })) {
      return Promise.reject(new Error('not connected to the kernel: run %load_ext sgl_jupyter'));
    }
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      this.treeWaiters.push(waiter);
      setTimeout(() => {
        const i = this.treeWaiters.indexOf(waiter);
        if (i >= 0) {
          this.treeWaiters.splice(i, 1);
          reject(new Error('the kernel did not answer the tree request (busy?)'));
        }
      }, timeoutMs);
    });
  }

  dispose(): void {
    this.setKernel(null);
  }

  private onMessage(comm: Kernel.IComm, data: Record<string, unknown>): void {
    if (comm !== this.comm || !data) {
      return;
    }
    this.opening = false;
    switch (data.type) {
      case 'stats':
        this.model.setState('connected');
        this.model.setStats(data.data);
        break;
      case 'flushed': {
        const ok = Boolean((data.data as Record<string, unknown> | undefined)?.ok);
        this.model.setMessage(ok ? 'cache flushed' : 'flush refused: requests are running (or no engine)');
        if (ok) {
          this.model.noteFlushed();
        }
        break;
      }
      case 'tree': {
        const waiters = this.treeWaiters.splice(0);
        for (const w of waiters) {
          if (data.error) {
            w.reject(new Error(String(data.error)));
          } else {
            w.resolve(data.data ?? null);
          }
        }
        break;
      }
      case 'error':
        this.model.setMessage(String((data.data as Record<string, unknown> | undefined)?.message ?? 'error'));
        break;
      default:
        break;
    }
  }

  private onStatus(_: unknown, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead' || status === 'starting') {
      this.dropComm();
      if (this.kernel) {
        this.model.setState('waiting');
      }
    }
  }

  /** After a cell finished (`idle` in reply to an execute_request), try again if not connected. */
  private onIopub(_: unknown, msg: KernelMessage.IIOPubMessage): void {
    if (this.comm || msg.header.msg_type !== 'status') {
      return;
    }
    const state = (msg.content as { execution_state?: string }).execution_state;
    const parent = (msg.parent_header as Partial<KernelMessage.IHeader> | undefined)?.msg_type;
    if (state === 'idle' && parent === 'execute_request') {
      this.open();
    }
  }

  private dropComm(): void {
    const comm = this.comm;
    this.comm = null;
    this.opening = false;
    for (const w of this.treeWaiters.splice(0)) {
      w.reject(new Error('panel connection closed'));
    }
    if (comm && !comm.isDisposed) {
      try {
        comm.close();
      } catch {
        // the kernel is gone already
      }
    }
  }
}
