/**
 * TokenStream front end: the live text of every `gen` of a %%sgl program.
 *
 * Synced traits (widget contract): `streams` {name: {text, tokens: [{t, lp}], n_tokens, tokens_per_s,
 * finish_reason, done}}, `order`, `status`, `error`, `show_logprobs` (two-way: the toggle here).
 * Text grows by appending spans for the new tokens only, so a long generation stays cheap to draw at
 * ~20 updates/s. `tokens` may hold only the last N tokens; the text before them is drawn plain.
 */
import {
  AnyModel,
  RenderProps,
  fmtNumber,
  fmtRate,
  h,
  mountView,
  widgetRoot
} from './common';

export interface Token {
  t: string;
  lp: number | null;
}

export interface StreamState {
  text: string;
  tokens: Token[];
  n_tokens: number;
  tokens_per_s: number;
  finish_reason: string | null;
  done: boolean;
}

const CSS = `
.sgl-token-stream .sgl-stream { margin-top: 6px; }
.sgl-token-stream .sgl-stream-name { font-weight: 600; }
.sgl-token-stream .sgl-text {
  white-space: pre-wrap; overflow-wrap: break-word; word-break: normal; margin: 2px 0; padding: 4px 6px;
  background: var(--jp-layout-color2, #f7f7f7); border-radius: 3px; max-height: 24em; overflow-y: auto;
  font-family: var(--jp-code-font-family, ui-monospace, monospace), "Noto Sans Mono CJK SC", "Noto Sans CJK SC", sans-serif;
}
.sgl-token-stream .sgl-token { border-radius: 2px; }
.sgl-token-stream .sgl-token:hover { outline: 1px solid var(--jp-brand-color1, #1976d2); }
.sgl-token-stream.sgl-show-lp .sgl-token { background: rgba(220, 60, 60, var(--sgl-lp-alpha, 0)); }
.sgl-token-stream .sgl-error { color: #b71c1c; white-space: pre-wrap; margin: 4px 0; }
.sgl-token-stream .sgl-stream-foot { display: flex; gap: 12px; }
.sgl-token-stream .sgl-legend { display: none; }
.sgl-token-stream.sgl-show-lp .sgl-legend { display: inline; }
.sgl-token-stream .sgl-legend i { display: inline-block; width: 40px; height: 0.8em; vertical-align: middle;
  background: linear-gradient(90deg, rgba(220,60,60,0), rgba(220,60,60,0.6)); }
`;

/** Background strength for a token: 0 for a certain token, up to 0.6 for an unlikely one. */
export function lpAlpha(lp: number | null | undefined): number {
  if (lp === null || lp === undefined || !Number.isFinite(lp)) {
    return 0;
  }
  return (1 - Math.exp(Math.min(lp, 0))) * 0.6;
}

/** Hover text of a token: its logprob and probability. */
export function tokenTitle(tok: Token): string {
  if (tok.lp === null || tok.lp === undefined || !Number.isFinite(tok.lp)) {
    return JSON.stringify(tok.t);
  }
  const p = Math.exp(Math.min(tok.lp, 0));
  return `${JSON.stringify(tok.t)}  logprob ${tok.lp.toFixed(3)}  p=${p.toFixed(3)}`;
}

/**
 * Split `text` into the plain part before the token window and the tokens that spell its end. Returns
 * null when the tokens do not spell the end of the text (the view then draws plain text).
 */
export function splitTokens(text: string, tokens: Token[]): { prefix: string; tokens: Token[] } | null {
  if (!tokens.length) {
    return null;
  }
  const joined = tokens.map(t => t.t).join('');
  if (!text.endsWith(joined)) {
    return null;
  }
  return { prefix: text.slice(0, text.length - joined.length), tokens };
}

/**
 * The tokens at the end of `tokens` that spell `suffix` exactly, or null when no tail does (then the
 * stream is redrawn from scratch).
 */
export function tailSpelling(tokens: Token[], suffix: string): Token[] | null {
  let acc = 0;
  let i = tokens.length;
  while (i > 0 && acc < suffix.length) {
    i -= 1;
    acc += tokens[i].t.length;
  }
  if (acc !== suffix.length) {
    return null;
  }
  const tail = tokens.slice(i);
  return tail.map(t => t.t).join('') === suffix ? tail : null;
}

function tokenSpan(tok: Token): HTMLSpanElement {
  const span = h('span', { class: 'sgl-token', title: tokenTitle(tok) }, tok.t);
  const alpha = lpAlpha(tok.lp);
  if (alpha > 0) {
    span.style.setProperty('--sgl-lp-alpha', alpha.toFixed(3));
  }
  if (tok.lp !== null && tok.lp !== undefined) {
    span.dataset.lp = String(tok.lp);
  }
  return span;
}

/** The view of one gen variable. */
export class StreamView {
  readonly el: HTMLDivElement;
  private readonly textEl: HTMLDivElement;
  private readonly footEl: HTMLDivElement;
  private rendered = '';
  private tokenMode = false;
  /** Full redraws (tests check that streaming appends instead). */
  redraws = 0;

  constructor(readonly name: string) {
    this.textEl = h('div', { class: 'sgl-text', lang: 'und' });
    this.footEl = h('div', { class: 'sgl-stream-foot sgl-muted' });
    this.el = h(
      'div',
      { class: 'sgl-stream', 'data-name': name },
      h('div', { class: 'sgl-stream-name' }, name),
      this.textEl,
      this.footEl
    );
  }

  update(state: Partial<StreamState>): void {
    const text = String(state.text ?? '');
    const tokens = Array.isArray(state.tokens) ? state.tokens : [];
    if (text !== this.rendered) {
      this.drawText(text, tokens);
    }
    this.drawFoot(state);
  }

  private drawText(text: string, tokens: Token[]): void {
    if (this.rendered && text.startsWith(this.rendered)) {
      const suffix = text.slice(this.rendered.length);
      const tail = this.tokenMode ? tailSpelling(tokens, suffix) : null;
      if (tail) {
        for (const tok of tail) {
          this.textEl.appendChild(tokenSpan(tok));
        }
        this.rendered = text;
        this.stickToBottom();
        return;
      }
      if (!this.tokenMode && !splitTokens(text, tokens)) {
        this.textEl.appendChild(document.createTextNode(suffix));
        this.rendered = text;
        this.stickToBottom();
        return;
      }
    }
    this.redraws += 1;
    this.textEl.textContent = '';
    const split = splitTokens(text, tokens);
    if (split) {
      if (split.prefix) {
        this.textEl.appendChild(document.createTextNode(split.prefix));
      }
      const frag = document.createDocumentFragment();
      for (const tok of split.tokens) {
        frag.appendChild(tokenSpan(tok));
      }
      this.textEl.appendChild(frag);
      this.tokenMode = true;
    } else {
      this.textEl.textContent = text;
      this.tokenMode = false;
    }
    this.rendered = text;
    this.stickToBottom();
  }

  private stickToBottom(): void {
    // Follow the newest text unless the reader scrolled up.
    const el = this.textEl;
    if (el.scrollHeight - el.scrollTop - el.clientHeight < 40) {
      el.scrollTop = el.scrollHeight;
    }
  }

  private drawFoot(state: Partial<StreamState>): void {
    const parts: HTMLElement[] = [
      h('span', { class: 'sgl-ntokens' }, `${fmtNumber(state.n_tokens ?? 0)} tokens`),
      h('span', { class: 'sgl-stream-tps' }, `${fmtRate(state.tokens_per_s ?? 0)} tok/s`)
    ];
    if (state.finish_reason) {
      parts.push(h('span', { class: 'sgl-finish' }, `finish: ${state.finish_reason}`));
    } else if (!state.done) {
      parts.push(h('span', { class: 'sgl-finish' }, 'generating\u2026'));
    }
    this.footEl.replaceChildren(...parts);
  }
}

/** The whole widget: header (status, logprob toggle), error, one StreamView per gen in `order`. */
export class TokenStreamView {
  readonly root: HTMLDivElement;
  private readonly statusEl: HTMLSpanElement;
  private readonly toggle: HTMLInputElement;
  private readonly errorEl: HTMLPreElement;
  private readonly streamsEl: HTMLDivElement;
  readonly views = new Map<string, StreamView>();

  constructor(private readonly model: AnyModel) {
    this.statusEl = h('span', { class: 'sgl-badge sgl-status' });
    this.toggle = h('input', { type: 'checkbox', class: 'sgl-lp-toggle' });
    this.toggle.addEventListener('change', () => {
      this.model.set('show_logprobs', this.toggle.checked);
      this.model.save_changes();
    });
    this.errorEl = h('pre', { class: 'sgl-error' });
    this.streamsEl = h('div', { class: 'sgl-streams' });
    this.root = widgetRoot(
      'sgl-token-stream',
      CSS,
      h(
        'div',
        { class: 'sgl-head' },
        h('span', {}, 'TokenStream'),
        this.statusEl,
        h('label', { title: 'colour tokens by their log-probability' }, this.toggle, ' logprobs'),
        h('span', { class: 'sgl-legend' }, 'likely ', h('i'), ' unlikely')
      ),
      this.errorEl,
      this.streamsEl
    );
  }

  draw(): void {
    const status = String(this.model.get('status') ?? '');
    this.statusEl.textContent = status || 'idle';
    this.statusEl.dataset.status = status;
    const showLp = Boolean(this.model.get('show_logprobs'));
    this.toggle.checked = showLp;
    this.root.classList.toggle('sgl-show-lp', showLp);
    const error = String(this.model.get('error') ?? '');
    this.errorEl.textContent = error;
    this.errorEl.hidden = !error;

    const streams: Record<string, Partial<StreamState>> = this.model.get('streams') ?? {};
    const order: string[] = [...(this.model.get('order') ?? [])];
    for (const name of Object.keys(streams)) {
      if (!order.includes(name)) {
        order.push(name);
      }
    }
    const wanted = order.filter(name => name in streams);
    for (const [name, view] of this.views) {
      if (!wanted.includes(name)) {
        view.el.remove();
        this.views.delete(name);
      }
    }
    wanted.forEach((name, i) => {
      let view = this.views.get(name);
      if (!view) {
        view = new StreamView(name);
        this.views.set(name, view);
      }
      if (this.streamsEl.children[i] !== view.el) {
        this.streamsEl.insertBefore(view.el, this.streamsEl.children[i] ?? null);
      }
      view.update(streams[name]);
    });
  }
}

export function render(props: RenderProps): () => void {
  const view = new TokenStreamView(props.model);
  return mountView(props, view.root, () => view.draw(), ['streams', 'order', 'status', 'error', 'show_logprobs']);
}

export default { render };
