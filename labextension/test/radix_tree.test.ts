import { describe, expect, it } from 'vitest';

import { childrenOf, render, subtreeSize, TreeNode } from '../src/widgets/radix_tree';
import { FakeModel, nextFrame } from './fake_model';

function node(id: number, parent: number, text: string, extra: Partial<TreeNode> = {}): TreeNode {
  return { id, parent, tokens: text.length, text, ref: 0, last_access: 0, hits: 0, ...extra };
}

const ROOT = node(0, -1, '');

function snapshot(nodes: TreeNode[]) {
  return { nodes, total_tokens: 42, evictable_tokens: 40, hit_tokens: 30, miss_tokens: 70, hit_rate: 0.3, version: 1 };
}

function mount(tree: unknown, extra: Record<string, unknown> = {}) {
  const model = new FakeModel({ tree, highlight: [], max_nodes: 200, ...extra });
  const el = document.createElement('div');
  const cleanup = render({ model, el });
  return { model, el, cleanup };
}

describe('radix tree helpers', () => {
  it('groups children by parent in id order and counts subtrees', () => {
    const nodes = [ROOT, node(3, 1, 'c'), node(1, 0, 'a'), node(2, 1, 'b'), node(4, 2, 'd')];
    const kids = childrenOf(nodes);
    expect(kids.get(1)!.map(n => n.id)).toEqual([2, 3]);
    expect(subtreeSize(kids, 0)).toBe(4);
    expect(subtreeSize(kids, 1)).toBe(3);
  });
});

describe('RadixTreeView', () => {
  it('draws every cached node (not the root) with its id, token count, refs and text', () => {
    const { el } = mount(snapshot([ROOT, node(1, 0, '<|im_start|>system\n你是助手', { ref: 1, hits: 2 }), node(2, 1, ' A'), node(3, 1, ' B')]));
    const nodes = [...el.querySelectorAll('.sgl-node')];
    expect(nodes.map(n => n.getAttribute('data-node-id'))).toEqual(['1', '2', '3']);
    const first = nodes[0].querySelector('.sgl-row')!;
    expect(first.querySelector('.sgl-meta')!.textContent).toContain('ref 1');
    expect(first.querySelector('.sgl-meta')!.textContent).toContain('hits 2');
    expect(first.querySelector('.sgl-preview')!.textContent).toBe('<|im_start|>system\u21b5你是助手');
    expect(nodes[0].classList.contains('sgl-locked')).toBe(true);
    expect(el.querySelector('.sgl-tree-hit-rate')!.textContent).toBe('hit rate 30.0%');
    expect(el.querySelector('.sgl-tree-count')!.textContent).toBe('3 nodes');
  });

  it('highlights the nodes of the latest hits and follows updates', async () => {
    const { model, el } = mount(snapshot([ROOT, node(1, 0, 'a'), node(2, 1, 'b')]), { highlight: [2] });
    expect(el.querySelector('[data-node-id="2"]')!.classList.contains('sgl-hit')).toBe(true);
    expect(el.querySelector('[data-node-id="1"]')!.classList.contains('sgl-hit')).toBe(false);
    model.kernelSet('tree', snapshot([ROOT, node(1, 0, 'a'), node(2, 1, 'b'), node(5, 1, 'new')]));
    model.kernelSet('highlight', [5]);
    await nextFrame();
    expect(el.querySelectorAll('.sgl-node').length).toBe(3);
    expect(el.querySelector('[data-node-id="5"]')!.classList.contains('sgl-hit')).toBe(true);
  });

  it('draws at most max_nodes nodes and says how many more there are', () => {
    const nodes = [ROOT];
    for (let i = 1; i <= 50; i++) {
      nodes.push(node(i, 0, `branch ${i}`));
    }
    const { el } = mount(snapshot(nodes), { max_nodes: 10 });
    expect(el.querySelectorAll('.sgl-node').length).toBe(10);
    expect(el.querySelector('.sgl-more')!.textContent).toBe('\u2026 40 more nodes');
  });

  it('collapses and expands a subtree when its caret is clicked', () => {
    const { el } = mount(snapshot([ROOT, node(1, 0, 'a'), node(2, 1, 'b'), node(3, 2, 'c')]));
    expect(el.querySelectorAll('.sgl-node').length).toBe(3);
    (el.querySelector('[data-toggle="1"]') as HTMLElement).click();
    expect(el.querySelectorAll('.sgl-node').length).toBe(1);
    expect(el.querySelector('[data-node-id="1"] .sgl-more')!.textContent).toBe('2 nodes below');
    (el.querySelector('[data-toggle="1"]') as HTMLElement).click();
    expect(el.querySelectorAll('.sgl-node').length).toBe(3);
  });

  it('says the cache is empty for a root-only or missing snapshot', () => {
    expect(mount(snapshot([ROOT])).el.querySelector('.sgl-tree-empty')).not.toBeNull();
    const { el } = mount({});
    expect(el.querySelector('.sgl-tree-empty')).not.toBeNull();
    expect(el.querySelectorAll('.sgl-node').length).toBe(0);
  });

  it('renders node text as text, never as HTML', () => {
    const { el } = mount(snapshot([ROOT, node(1, 0, '<script>alert(1)</script>')]));
    expect(el.querySelector('script')).toBeNull();
    expect(el.querySelector('.sgl-preview')!.textContent).toBe('<script>alert(1)</script>');
  });
});
