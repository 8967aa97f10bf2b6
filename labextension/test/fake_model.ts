/** A stand-in for anywidget's model in unit tests: traits in a Map, `change:<name>` events, saved changes. */
import type { AnyModel } from '../src/widgets/common';

export class FakeModel implements AnyModel {
  private readonly values = new Map<string, unknown>();
  private readonly handlers = new Map<string, Set<(...args: any[]) => void>>();
  saved: Array<Record<string, unknown>> = [];
  private dirty: Record<string, unknown> = {};

  constructor(initial: Record<string, unknown>) {
    for (const [k, v] of Object.entries(initial)) {
      this.values.set(k, v);
    }
  }
  get(name: string): any {
    return this.values.get(name);
  }
  set(name: string, value: unknown): void {
    this.values.set(name, value);
    this.dirty[name] = value;
    this.emit(`change:${name}`);
  }
  save_changes(): void {
    this.saved.push(this.dirty);
    this.dirty = {};
  }
  on(event: string, cb: (...args: any[]) => void): void {
    if (!this.handlers.has(event)) {
      this.handlers.set(event, new Set());
    }
    this.handlers.get(event)!.add(cb);
  }
  off(event?: string | null, cb?: ((...args: any[]) => void) | null): void {
    if (event && cb) {
      this.handlers.get(event)?.delete(cb);
    }
  }
  listenerCount(): number {
    let n = 0;
    for (const set of this.handlers.values()) {
      n += set.size;
    }
    return n;
  }
  /** What the kernel does: change a trait (and fire its change event). */
  kernelSet(name: string, value: unknown): void {
    this.values.set(name, value);
    this.emit(`change:${name}`);
  }
  private emit(event: string): void {
    for (const cb of [...(this.handlers.get(event) ?? [])]) {
      cb();
    }
  }
}

/** Let requestAnimationFrame-scheduled redraws run. */
export function nextFrame(): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, 40));
}
