import { EditorState } from '@codemirror/state';
import { EditorView } from '@codemirror/view';
import { describe, expect, it } from 'vitest';

import { SglCompletionProvider } from '../src/completer';
import { sglEditorExtension } from '../src/editor';

function editor(doc: string): EditorView {
  const parent = document.createElement('div');
  document.body.appendChild(parent);
  return new EditorView({ state: EditorState.create({ doc, extensions: [sglEditorExtension()] }), parent });
}

describe('CodeMirror extension', () => {
  it('marks a %%sgl cell and emphasises its DSL words', () => {
    const view = editor('%%sgl --out r\ns += user("写一首诗")\ns += assistant(gen("poem", max_tokens=32))');
    expect(view.dom.classList.contains('sgl-cell')).toBe(true);
    expect(view.contentDOM.querySelector('.sgl-magic-line .sgl-magic')!.textContent).toBe('%%sgl');
    const words = [...view.contentDOM.querySelectorAll('.sgl-dsl-word')].map(e => e.textContent);
    expect(words).toEqual(['user', 'assistant', 'gen']);
    view.destroy();
  });

  it('leaves other cells alone and reacts when %%sgl is typed', () => {
    const view = editor('s += gen("x")');
    expect(view.dom.classList.contains('sgl-cell')).toBe(false);
    expect(view.contentDOM.querySelectorAll('.sgl-dsl-word').length).toBe(0);
    view.dispatch({ changes: { from: 0, insert: '%%sgl\n' } });
    expect(view.dom.classList.contains('sgl-cell')).toBe(true);
    expect([...view.contentDOM.querySelectorAll('.sgl-dsl-word')].map(e => e.textContent)).toEqual(['gen']);
    view.destroy();
  });
});

describe('completion provider', () => {
  const provider = new SglCompletionProvider();
  const context = (source: string) => ({ widget: null as any, editor: { model: { sharedModel: { getSource: () => source } } } as any });

  it('applies to %%sgl cells only', async () => {
    expect(await provider.isApplicable(context('%%sgl\n'))).toBe(true);
    expect(await provider.isApplicable(context('print(1)'))).toBe(false);
  });

  it('offers DSL names with signatures and replaces the typed prefix', async () => {
    const text = '%%sgl\ns += sel';
    const reply = await provider.fetch({ text, offset: text.length }, context(text));
    expect(reply.start).toBe(text.length - 3);
    expect(reply.end).toBe(text.length);
    expect(reply.items.map(i => i.label)).toEqual(['select']);
    expect(reply.items[0].documentation).toContain('choices');
  });

  it('offers %%sgl options on the magic line', async () => {
    const text = '%%sgl --no';
    const reply = await provider.fetch({ text, offset: text.length }, context(text));
    expect(reply.items.map(i => i.label)).toEqual(['--no-stream', '--no-widget']);
  });
});
