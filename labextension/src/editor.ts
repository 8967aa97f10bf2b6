/**
 * CodeMirror 6 extension for %%sgl cells: the cell stays Python-highlighted (the kernel language), and on
 * top of that the magic line is marked, DSL words (gen, select, fork, join, roles, function) are
 * emphasised, and hovering a DSL name shows its signature and help. Cells without `%%sgl` on their first
 * line are left alone.
 */
import { Extension, RangeSetBuilder } from '@codemirror/state';
import {
  Decoration,
  DecorationSet,
  EditorView,
  ViewPlugin,
  ViewUpdate,
  hoverTooltip
} from '@codemirror/view';

import { emphasisRanges, isSglCell, lookup, wordBefore } from './dsl';

const magicLine = Decoration.line({ class: 'sgl-magic-line' });
const magicMark = Decoration.mark({ class: 'sgl-magic' });
const wordMarks = new Map<string, Decoration>();

function wordMark(word: string): Decoration {
  let mark = wordMarks.get(word);
  if (!mark) {
    mark = Decoration.mark({ class: 'sgl-dsl-word', attributes: { 'data-sgl-word': word } });
    wordMarks.set(word, mark);
  }
  return mark;
}

function docIsSgl(view: EditorView): boolean {
  return isSglCell(view.state.doc.line(1).text);
}

/** Decorations for the visible part of a %%sgl cell. */
export function sglDecorations(view: EditorView): DecorationSet {
  const builder = new RangeSetBuilder<Decoration>();
  if (!docIsSgl(view)) {
    return builder.finish();
  }
  const doc = view.state.doc;
  for (const { from, to } of view.visibleRanges) {
    let pos = from;
    while (pos <= to) {
      const line = doc.lineAt(pos);
      if (line.number === 1) {
        builder.add(line.from, line.from, magicLine);
        const at = line.text.indexOf('%%sgl');
        builder.add(line.from + at, line.from + at + 5, magicMark);
      } else {
        for (const [a, b] of emphasisRanges(line.text)) {
          builder.add(line.from + a, line.from + b, wordMark(line.text.slice(a, b)));
        }
      }
      if (line.to >= to) {
        break;
      }
      pos = line.to + 1;
    }
  }
  return builder.finish();
}

const sglHighlighter = ViewPlugin.fromClass(
  class {
    decorations: DecorationSet;
    constructor(view: EditorView) {
      this.decorations = sglDecorations(view);
    }
    update(update: ViewUpdate) {
      if (update.docChanged || update.viewportChanged) {
        this.decorations = sglDecorations(update.view);
      }
    }
  },
  { decorations: v => v.decorations }
);

/** `class="sgl-cell"` on the editor of a %%sgl cell (styling hook and what the e2e test looks for). */
const sglCellClass = EditorView.editorAttributes.compute(['doc'], state => {
  const attrs: Record<string, string> = isSglCell(state.doc.line(1).text) ? { class: 'sgl-cell' } : {};
  return attrs;
});

/** Signature + help of the DSL name under the pointer. */
const sglHover = hoverTooltip((view, pos) => {
  if (!docIsSgl(view)) {
    return null;
  }
  const line = view.state.doc.lineAt(pos);
  if (line.number === 1) {
    return null;
  }
  let end = pos - line.from;
  while (end < line.text.length && /\w/.test(line.text[end])) {
    end += 1;
  }
  const { word, start } = wordBefore(line.text, end);
  const entry = lookup(word);
  if (!entry) {
    return null;
  }
  return {
    pos: line.from + start,
    end: line.from + end,
    above: true,
    create: () => {
      const dom = document.createElement('div');
      dom.className = 'sgl-dsl-tooltip';
      const sig = document.createElement('code');
      sig.textContent = entry.signature;
      const doc = document.createElement('div');
      doc.textContent = entry.doc;
      dom.append(sig, doc);
      return { dom };
    }
  };
});

/** Everything the editor registry adds to every cell editor (inactive outside %%sgl cells). */
export function sglEditorExtension(): Extension {
  return [sglHighlighter, sglCellClass, sglHover];
}
