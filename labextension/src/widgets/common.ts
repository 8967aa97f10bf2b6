/**
 * Shared pieces of the widget front ends. These modules are bundled into standalone ES modules for
 * anywidget (no JupyterLab imports here), so one build serves JupyterLab, Notebook 7 and other hosts.
 */

/** The part of an anywidget model the views use (anywidget >= 0.9 `AnyModel`). */
export interface AnyModel {
  get(name: string): any;
  set(name: string, value: unknown): void;
  save_changes(): void;
  on(event: string, callback: (...args: any[]) => void): void;
  off(event?: string | null, callback?: ((...args: any[]) => void) | null): void;
}

/** What anywidget passes to `render`. */
export interface RenderProps {
  model: AnyModel;
  el: HTMLElement;
}

type Attrs = Record<string, string | number | boolean | null | undefined>;
type Child = Node | string | null | undefined | false;

/**
 * Create an element. Text goes in through text nodes, never innerHTML, so model text (prompts, generated
 * text, token strings) cannot inject markup.
 */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** Create an SVG element (same rules as `h`). */
export function s(tag: string, attrs: Attrs = {}, ...children: Child[]): SVGElement {
  const el = document.createElementNS(SVG_NS, tag) as SVGElement;
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el: Element, attrs: Attrs): void {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    el.setAttribute(key, value === true ? '' : String(value));
  }
}

function append(el: Element, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    el.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
  }
}

/** Insert a <style> once per document (all views of one widget kind share it). */
export function injectStyle(id: string, css: string, doc: Document = document): void {
  if (doc.getElementById(id)) {
    return;
  }
  const style = doc.createElement('style');
  style.id = id;
  style.textContent = css;
  doc.head.appendChild(style);
}

/** The outer element of a widget of `kind` (its class, e.g. `sgl-radix-tree`), with the shared and its own CSS. */
export function widgetRoot(kind: string, css: string, ...children: Child[]): HTMLDivElement {
  injectStyle('sgl-widget-base-css', BASE_CSS);
  injectStyle(`${kind}-css`, css);
  return h('div', { class: `sgl-widget ${kind}` }, ...children);
}

/** Subscribe to several `change:<trait>` events; returns the unsubscribe function. */
export function onChanges(model: AnyModel, traits: string[], callback: () => void): () => void {
  for (const trait of traits) {
    model.on(`change:${trait}`, callback);
  }
  return () => {
    for (const trait of traits) {
      model.off(`change:${trait}`, callback);
    }
  };
}

/**
 * The body of every widget's anywidget `render`: put `root` in `el`, draw now and once per frame after any of
 * `traits` changed; returns the clean-up function anywidget calls when the view goes away.
 */
export function mountView(
  { model, el }: RenderProps,
  root: HTMLElement,
  draw: () => void,
  traits: string[]
): () => void {
  el.appendChild(root);
  draw();
  const frame = frameScheduler(draw);
  const off = onChanges(model, traits, frame.schedule);
  return () => {
    off();
    frame.cancel();
    root.remove();
  };
}

/**
 * Coalesce redraws into one per animation frame: the kernel batches to ~20 messages/s, but one message may
 * change several traits, and a hidden tab should not draw at all.
 */
export function frameScheduler(draw: () => void): { schedule: () => void; cancel: () => void } {
  let pending: number | null = null;
  const raf: (cb: () => void) => number =
    typeof requestAnimationFrame === 'function'
      ? cb => requestAnimationFrame(cb)
      : cb => setTimeout(cb, 16) as unknown as number;
  const caf: (handle: number) => void =
    typeof cancelAnimationFrame === 'function' ? h => cancelAnimationFrame(h) : h => clearTimeout(h);
  return {
    schedule: () => {
      if (pending === null) {
        pending = raf(() => {
          pending = null;
          draw();
        });
      }
    },
    cancel: () => {
      if (pending !== null) {
        caf(pending);
        pending = null;
      }
    }
  };
}

/** A number for people: 1234 -> "1,234", 12.345 -> "12.3". */
export function fmtNumber(value: unknown, digits = 1): string {
  const n = Number(value);
  if (!Number.isFinite(n)) {
    return '0';
  }
  if (Number.isInteger(n)) {
    return n.toLocaleString('en-US');
  }
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** A rate with one decimal always shown: 17 -> "17.0", 1234.56 -> "1,234.6". */
export function fmtRate(value: unknown): string {
  const n = Number(value);
  return (Number.isFinite(n) ? n : 0).toLocaleString('en-US', { minimumFractionDigits: 1, maximumFractionDigits: 1 });
}

/** A 0..1 rate as a percentage: 0.4567 -> "45.7%". */
export function fmtPercent(rate: unknown): string {
  const n = Number(rate);
  return `${(Number.isFinite(n) ? n * 100 : 0).toFixed(1)}%`;
}

/** Make whitespace that would vanish in a one-line preview visible. */
export function previewText(text: string, max: number): string {
  const flat = String(text ?? '')
    .replace(/\n/g, '\u21b5')
    .replace(/\t/g, '\u21e5');
  const chars = Array.from(flat); // by code point: never cut a surrogate pair (emoji) in half
  return chars.length > max ? chars.slice(0, max - 1).join('') + '\u2026' : flat;
}

/** CSS shared by all three widgets: Jupyter theme variables with fallbacks for hosts without them. */
export const BASE_CSS = `
.sgl-widget {
  font-family: var(--jp-code-font-family, ui-monospace, SFMono-Regular, Menlo, Consolas, "Noto Sans Mono CJK SC", monospace);
  font-size: var(--jp-code-font-size, 12px);
  color: var(--jp-ui-font-color1, #1f1f1f);
  background: var(--jp-layout-color1, #fff);
  border: 1px solid var(--jp-border-color2, #ddd);
  border-radius: 4px;
  padding: 6px 8px;
  box-sizing: border-box;
  max-width: 100%;
}
.sgl-widget .sgl-head { color: var(--jp-ui-font-color2, #616161); display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }
.sgl-widget .sgl-badge { border-radius: 3px; padding: 0 5px; font-size: 0.9em; background: var(--jp-layout-color3, #e0e0e0); color: var(--jp-ui-font-color1, #1f1f1f); }
.sgl-widget .sgl-badge[data-status="running"] { background: #d6ebff; color: #084c8d; }
.sgl-widget .sgl-badge[data-status="done"] { background: #daf2dc; color: #1b5e20; }
.sgl-widget .sgl-badge[data-status="error"] { background: #fde0e0; color: #b71c1c; }
.sgl-widget .sgl-badge[data-status="interrupted"] { background: #fff0cc; color: #7a5200; }
.sgl-widget .sgl-muted { color: var(--jp-ui-font-color2, #616161); }
`;
