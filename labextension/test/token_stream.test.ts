import { describe, expect, it } from 'vitest';

import { lpAlpha, render, splitTokens, tailSpelling, Token } from '../src/widgets/token_stream';
import { FakeModel, nextFrame } from './fake_model';

function tok(t: string, lp: number | null = null): Token {
  return { t, lp };
}

function stream(text: string, tokens: Token[], extra: Record<string, unknown> = {}) {
  return { text, tokens, n_tokens: tokens.length, tokens_per_s: 12.5, finish_reason: null, done: false, ...extra };
}

function mount(state: Record<string, unknown>) {
  const model = new FakeModel({ streams: {}, order: [], status: 'running', error: '', show_logprobs: false, ...state });
  const el = document.createElement('div');
  document.body.appendChild(el);
  const cleanup = render({ model, el });
  return { model, el, cleanup };
}

describe('token stream helpers', () => {
  it('splits the text into a plain prefix and the token window that spells its end', () => {
    expect(splitTokens('Hello world', [tok(' wor'), tok('ld')])).toEqual({ prefix: 'Hello', tokens: [tok(' wor'), tok('ld')] });
    expect(splitTokens('Hello', [tok('xx')])).toBeNull();
    expect(splitTokens('Hello', [])).toBeNull();
  });

  it('finds the tail tokens that spell an appended suffix, or none', () => {
    const toks = [tok('A'), tok('B'), tok('CD')];
    expect(tailSpelling(toks, 'BCD')).toEqual([tok('B'), tok('CD')]);
    expect(tailSpelling(toks, 'D')).toBeNull(); // cuts a token in half
    expect(tailSpelling(toks, 'XCD')).toBeNull();
  });

  it('colours unlikely tokens more than likely ones and ignores missing logprobs', () => {
    expect(lpAlpha(0)).toBe(0);
    expect(lpAlpha(null)).toBe(0);
    expect(lpAlpha(-5)).toBeGreaterThan(lpAlpha(-0.1));
    expect(lpAlpha(-100)).toBeLessThanOrEqual(0.6);
  });
});

describe('TokenStream view', () => {
  it('draws one panel per gen in `order`, with Chinese text, tokens/s and finish reason', async () => {
    const { el } = mount({
      order: ['answer', 'title'],
      streams: {
        title: stream('标题：你好', [tok('标题'), tok('：'), tok('你好')], { done: true, finish_reason: 'stop' }),
        answer: stream('北京是中国的首都 🇨🇳', [tok('北京'), tok('是中国的首都'), tok(' 🇨🇳')])
      }
    });
    const panels = [...el.querySelectorAll('.sgl-stream')];
    expect(panels.map(p => p.getAttribute('data-name'))).toEqual(['answer', 'title']);
    expect(panels[0].querySelector('.sgl-text')!.textContent).toBe('北京是中国的首都 🇨🇳');
    expect(panels[0].querySelectorAll('.sgl-token').length).toBe(3);
    expect(panels[1].querySelector('.sgl-finish')!.textContent).toBe('finish: stop');
    expect(panels[0].querySelector('.sgl-finish')!.textContent).toContain('generating');
    expect(panels[0].querySelector('.sgl-stream-tps')!.textContent).toBe('12.5 tok/s');
    expect(el.querySelector('.sgl-status')!.textContent).toBe('running');
  });

  it('appends new tokens without redrawing the stream', async () => {
    const { model, el } = mount({ order: ['a'], streams: { a: stream('Once', [tok('Once')]) } });
    const firstSpan = el.querySelector('.sgl-token');
    const toks = [tok('Once')];
    let text = 'Once';
    for (const piece of [' upon', ' a', ' time', '，', '从前']) {
      toks.push(tok(piece));
      text += piece;
      model.kernelSet('streams', { a: stream(text, [...toks]) });
      await nextFrame();
    }
    const textEl = el.querySelector('.sgl-stream .sgl-text')!;
    expect(textEl.textContent).toBe('Once upon a time，从前');
    expect(textEl.querySelectorAll('.sgl-token').length).toBe(6);
    // The first token's span is the same element: later tokens were appended, not redrawn.
    expect(textEl.firstChild).toBe(firstSpan);
    expect(el.querySelector('.sgl-ntokens')!.textContent).toBe('6 tokens');
    expect(textEl.childNodes.length).toBe(6);
  });

  it('draws the text before a truncated token window as plain text', async () => {
    const { el } = mount({ order: ['a'], streams: { a: stream('a long prefix and then tail', [tok(' tail')]) } });
    const textEl = el.querySelector('.sgl-text')!;
    expect(textEl.textContent).toBe('a long prefix and then tail');
    expect(textEl.querySelectorAll('.sgl-token').length).toBe(1);
    expect(textEl.firstChild!.nodeType).toBe(Node.TEXT_NODE);
  });

  it('shows markup in generated text as text, never as HTML', () => {
    const evil = '<img src=x onerror="alert(1)"><b>bold</b>';
    const { el } = mount({ order: ['x'], streams: { x: stream(evil, [tok(evil)]) }, error: '<i>err</i>', status: 'error' });
    expect(el.querySelector('img')).toBeNull();
    expect(el.querySelector('b')).toBeNull();
    expect(el.querySelector('.sgl-text')!.textContent).toBe(evil);
    expect(el.querySelector('.sgl-error')!.textContent).toBe('<i>err</i>');
    expect(el.querySelector('.sgl-status')!.getAttribute('data-status')).toBe('error');
  });

  it('the logprob toggle writes show_logprobs back to the kernel and colours tokens', async () => {
    const { model, el } = mount({ order: ['a'], streams: { a: stream('ab', [tok('a', -0.01), tok('b', -4)]) } });
    const toggle = el.querySelector('.sgl-lp-toggle') as HTMLInputElement;
    expect(el.querySelector('.sgl-token-stream')!.classList.contains('sgl-show-lp')).toBe(false);
    toggle.checked = true;
    toggle.dispatchEvent(new Event('change'));
    expect(model.get('show_logprobs')).toBe(true);
    expect(model.saved).toEqual([{ show_logprobs: true }]);
    await nextFrame();
    expect(el.querySelector('.sgl-token-stream')!.classList.contains('sgl-show-lp')).toBe(true);
    const spans = [...el.querySelectorAll('.sgl-token')] as HTMLElement[];
    const alpha = (s: HTMLElement) => Number(s.style.getPropertyValue('--sgl-lp-alpha') || 0);
    expect(alpha(spans[1])).toBeGreaterThan(alpha(spans[0]));
    expect(spans[1].title).toContain('logprob -4.000');
  });

  it('removes streams that disappear and stops listening on cleanup', async () => {
    const { model, el, cleanup } = mount({ order: ['a', 'b'], streams: { a: stream('x', []), b: stream('y', []) } });
    model.kernelSet('streams', { b: stream('y', []) });
    model.kernelSet('order', ['b']);
    await nextFrame();
    expect([...el.querySelectorAll('.sgl-stream')].map(p => p.getAttribute('data-name'))).toEqual(['b']);
    cleanup();
    expect(model.listenerCount()).toBe(0);
    expect(el.children.length).toBe(0);
  });
});
