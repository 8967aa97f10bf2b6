/**
 * Completion provider for %%sgl cells: DSL names with their signatures in the body, and the cell magic's
 * options on its first line. Ranked above the kernel so DSL help comes first; the kernel's own completions
 * (user variables, Python) still appear beside them.
 */
import {
  CompletionHandler,
  ICompletionContext,
  ICompletionProvider
} from '@jupyterlab/completer';

import { completions, isSglCell, wordBefore } from './dsl';

export class SglCompletionProvider implements ICompletionProvider {
  readonly identifier = 'sgl-jupyter:dsl';
  readonly rank = 600;
  readonly renderer = null;

  async isApplicable(context: ICompletionContext): Promise<boolean> {
    const source = context.editor?.model.sharedModel.getSource() ?? '';
    return isSglCell(source);
  }

  async fetch(
    request: CompletionHandler.IRequest,
    _context: ICompletionContext
  ): Promise<CompletionHandler.ICompletionItemsReply> {
    const { text, offset } = request;
    if (!isSglCell(text)) {
      return { start: offset, end: offset, items: [] };
    }
    const onMagicLine = !text.slice(0, offset).includes('\n');
    const { word, start } = wordBefore(text, offset);
    const items = completions(word, onMagicLine).map(d => ({
      label: d.name,
      insertText: d.name,
      type: d.kind,
      detail: d.signature,
      documentation: `${d.signature}\n\n${d.doc}`
    }));
    return { start, end: offset, items };
  }
}
