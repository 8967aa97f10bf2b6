import { describe, expect, it } from 'vitest';

import { blankStringsAndComments, completions, emphasisRanges, isSglCell, lookup, wordBefore } from '../src/dsl';

function words(line: string): string[] {
  return emphasisRanges(line).map(([a, b]) => line.slice(a, b));
}

describe('%%sgl cells', () => {
  it('recognises the cell magic only on the first line', () => {
    expect(isSglCell('%%sgl\ns += gen("x")')).toBe(true);
    expect(isSglCell('%%sgl --out r --max-tokens 8\n')).toBe(true);
    expect(isSglCell('  %%sgl')).toBe(true);
    expect(isSglCell('%%sglx\n')).toBe(false);
    expect(isSglCell('x = 1\n%%sgl')).toBe(false);
    expect(isSglCell('%sgl_load')).toBe(false);
  });

  it('emphasises DSL words in code but not inside strings, comments or other names', () => {
    expect(words('s += user("gen select") + assistant(gen("answer", max_tokens=8))')).toEqual(['user', 'assistant', 'gen']);
    expect(words('forks = s.fork(3); forks.join()  # then gen more')).toEqual(['fork', 'join']);
    expect(words('general = genome.gen + my_select')).toEqual([]);
    expect(words('s += gen_int("n") + select("c", choices=["a", "b"])')).toEqual(['gen_int', 'select']);
    expect(words('@function')).toEqual(['function']);
    expect(words("s += system('''你是 gen''')")).toEqual(['system']);
  });

  it('blanks string bodies and comments without moving offsets', () => {
    const line = 'a("x\\"y") # c';
    const out = blankStringsAndComments(line);
    expect(out.length).toBe(line.length);
    expect(out).toBe('a("    ")    ');
  });

  it('completes DSL names in the body and options on the magic line', () => {
    expect(completions('ge', false).map(d => d.name)).toEqual(['gen', 'gen_int', 'gen_string']);
    expect(completions('ass', false).map(d => d.name)).toEqual(['assistant', 'assistant_begin', 'assistant_end']);
    expect(completions('--m', true).map(d => d.name)).toEqual(['--max-tokens']);
    expect(completions('ge', true)).toEqual([]);
    expect(completions('', false)).toEqual([]);
    expect(lookup('select')!.signature).toContain('choices');
  });

  it('finds the word being typed', () => {
    expect(wordBefore('s += ge', 7)).toEqual({ word: 'ge', start: 5 });
    expect(wordBefore('%%sgl --max', 11)).toEqual({ word: '--max', start: 6 });
  });
});
