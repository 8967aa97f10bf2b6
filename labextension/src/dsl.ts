/**
 * The SGLang DSL as the editor sees it: which words to emphasise in `%%sgl` cells, and the signature and
 * one-line help the completer and hover tooltips show. Kept in step with sgl_jupyter/lang/api.py.
 */

export interface DslName {
  name: string;
  /** `function` (a call), `method` (on the state `s`), `keyword` (decorator / role). */
  kind: 'function' | 'method' | 'keyword';
  signature: string;
  doc: string;
}

export const DSL_NAMES: DslName[] = [
  {
    name: 'gen',
    kind: 'function',
    signature:
      'gen(name=None, max_tokens=None, stop=None, temperature=None, top_p=None, top_k=None, regex=None, json_schema=None, ...)',
    doc: 'Generate text and store it as s[name]. Sampling arguments follow SGLang; regex/json_schema constrain the output.'
  },
  {
    name: 'gen_int',
    kind: 'function',
    signature: 'gen_int(name=None, max_tokens=None, **kwargs)',
    doc: 'Generate an integer (a gen constrained to -?[0-9]+).'
  },
  {
    name: 'gen_string',
    kind: 'function',
    signature: 'gen_string(name=None, max_tokens=None, **kwargs)',
    doc: 'Generate a JSON-style double-quoted string.'
  },
  {
    name: 'select',
    kind: 'function',
    signature: 'select(name=None, choices=None, temperature=0.0, choices_method=token_length_normalized)',
    doc: 'Append the most likely of `choices` (scored by the model) and store it as s[name].'
  },
  {
    name: 'fork',
    kind: 'method',
    signature: 's.fork(size=1)',
    doc: 'Copy the program state `size` times; the copies share the prompt prefix in the radix cache.'
  },
  {
    name: 'join',
    kind: 'method',
    signature: 'forks.join(mode="gather_variable")',
    doc: 'Wait for every fork to finish before reading their variables.'
  },
  {
    name: 'system',
    kind: 'keyword',
    signature: 'system(expr=None)',
    doc: "A system-role message in the model's chat template: s += system(\"...\")."
  },
  {
    name: 'user',
    kind: 'keyword',
    signature: 'user(expr=None)',
    doc: "A user-role message in the model's chat template: s += user(\"...\")."
  },
  {
    name: 'assistant',
    kind: 'keyword',
    signature: 'assistant(expr=None)',
    doc: 'An assistant-role message; usually wraps a gen: s += assistant(gen("answer", max_tokens=64)).'
  },
  {
    name: 'function',
    kind: 'keyword',
    signature: '@function  def program(s, ...): ...',
    doc: 'Decorator that turns a Python function with a first argument `s` into an SGLang program (program.run(...)).'
  },
  { name: 'system_begin', kind: 'keyword', signature: 'system_begin()', doc: 'Open a system-role block.' },
  { name: 'system_end', kind: 'keyword', signature: 'system_end()', doc: 'Close a system-role block.' },
  { name: 'user_begin', kind: 'keyword', signature: 'user_begin()', doc: 'Open a user-role block.' },
  { name: 'user_end', kind: 'keyword', signature: 'user_end()', doc: 'Close a user-role block.' },
  { name: 'assistant_begin', kind: 'keyword', signature: 'assistant_begin()', doc: 'Open an assistant-role block.' },
  { name: 'assistant_end', kind: 'keyword', signature: 'assistant_end()', doc: 'Close an assistant-role block.' },
  {
    name: 'set_default_backend',
    kind: 'function',
    signature: 'set_default_backend(backend)',
    doc: 'Run programs on `backend` (an Engine, Runtime or RuntimeEndpoint) by default.'
  },
  {
    name: 'RuntimeEndpoint',
    kind: 'function',
    signature: 'RuntimeEndpoint(base_url, api_key=None)',
    doc: "A backend that talks to an SGLang-compatible server's native API."
  },
  {
    name: 'Runtime',
    kind: 'function',
    signature: 'Runtime(model_path=None, endpoint=None, **engine_args)',
    doc: 'A backend: an in-process engine for model_path, or a server at endpoint.'
  }
];

/** Words drawn with emphasis in a %%sgl cell (the issue names these). */
export const EMPHASISED = ['gen', 'gen_int', 'gen_string', 'select', 'fork', 'join', 'system', 'user', 'assistant', 'function'];

/** Options of the %%sgl cell magic (its first line), for completion there. */
export const CELL_OPTIONS: DslName[] = [
  ['--out', 'variable for the final program state (default: _sgl)'],
  ['--no-stream', 'no live token stream: run, then show the final text'],
  ['--temperature', 'default temperature of every gen'],
  ['--max-tokens', 'default max_tokens of every gen'],
  ['--seed', 'sampling seed'],
  ['--program', 'also define the body as an @function program with this name'],
  ['--logprobs', 'ask for token logprobs: the widget colours tokens by them'],
  ['--no-widget', 'stream without the live TokenStream widget']
].map(([name, doc]) => ({ name, kind: 'keyword' as const, signature: `%%sgl ${name}`, doc }));

const BY_NAME = new Map(DSL_NAMES.map(d => [d.name, d]));

export function lookup(name: string): DslName | undefined {
  return BY_NAME.get(name);
}

/** The magic line that marks a cell as an SGLang program. */
export const SGL_CELL_RE = /^\s*%%sgl(\s|$)/;

/** Whether a cell's source is a %%sgl cell (its first line is the cell magic). */
export function isSglCell(source: string): boolean {
  const firstLine = source.split('\n', 1)[0];
  return SGL_CELL_RE.test(firstLine);
}

/** Regex for an emphasised DSL word in code (a whole identifier, not an attribute like `x.genome`). */
export const EMPHASIS_RE = new RegExp(`(?<![\\w.])(?:${EMPHASISED.join('|')})(?!\\w)|(?<=\\.)(?:fork|join)(?!\\w)`, 'g');

/** Words to emphasise in `line`, as [from, to) offsets. Skips comments and string literals. */
export function emphasisRanges(line: string): Array<[number, number]> {
  const code = blankStringsAndComments(line);
  const out: Array<[number, number]> = [];
  EMPHASIS_RE.lastIndex = 0;
  let m: RegExpExecArray | null;
  while ((m = EMPHASIS_RE.exec(code)) !== null) {
    out.push([m.index, m.index + m[0].length]);
  }
  return out;
}

/**
 * Replace the inside of string literals and comments with spaces (same length), so word matching only sees
 * code. Line-local: a triple-quoted string spanning lines is treated per line, good enough for emphasis.
 */
export function blankStringsAndComments(line: string): string {
  const chars = line.split('');
  let i = 0;
  while (i < chars.length) {
    const c = chars[i];
    if (c === '#') {
      for (let j = i; j < chars.length; j++) {
        chars[j] = ' ';
      }
      break;
    }
    if (c === '"' || c === "'") {
      const triple = chars.slice(i, i + 3).join('') === c.repeat(3);
      const quote = triple ? c.repeat(3) : c;
      let j = i + quote.length;
      while (j < chars.length) {
        if (chars[j] === '\\') {
          j += 2;
          continue;
        }
        if (chars.slice(j, j + quote.length).join('') === quote) {
          break;
        }
        j += 1;
      }
      for (let k = i + quote.length; k < Math.min(j, chars.length); k++) {
        chars[k] = ' ';
      }
      i = j + quote.length;
      continue;
    }
    i += 1;
  }
  return chars.join('');
}

/** The identifier (or --option) that ends at `offset` in `text`: what the user is typing. */
export function wordBefore(text: string, offset: number): { word: string; start: number } {
  let start = offset;
  while (start > 0 && /[\w-]/.test(text[start - 1])) {
    start -= 1;
  }
  return { word: text.slice(start, offset), start };
}

/** Completion candidates for `word` in a %%sgl cell: options on the magic line, DSL names elsewhere. */
export function completions(word: string, onMagicLine: boolean): DslName[] {
  if (onMagicLine) {
    return word.startsWith('-') ? CELL_OPTIONS.filter(o => o.name.startsWith(word)) : [];
  }
  if (!word || word.startsWith('-')) {
    return [];
  }
  return DSL_NAMES.filter(d => d.name.startsWith(word));
}
