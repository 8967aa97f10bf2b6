/**
 * RadixTreeView front end: the engine's radix (prefix) cache as a collapsible indented tree.
 *
 * Synced traits (widget contract): `tree` (= `engine.cache_snapshot()`), `highlight` (node ids hit by the
 * latest requests), `max_nodes` (draw at most this many nodes; the rest is summarised per subtree).
 * Every drawn node is an element with class `sgl-node` and `data-node-id`; the root (id 0) is the tree
 * itself, not a node. The JupyterLab engine panel reuses `RadixTreeDrawing` for its own tree view.
 */
import {
  RenderProps,
  fmtNumber,
  fmtPercent,
  h,
  mountView,
  previewText,
  widgetRoot
} from './common';

export interface TreeNode {
  id: number;
  parent: number;
  tokens: number;
  text: string;
  ref: number;
  last_access?: number;
  hits?: number;
}

export interface CacheSnapshot {
  nodes: TreeNode[];
  total_tokens: number;
  evictable_tokens: number;
  hit_tokens: number;
  miss_tokens: number;
  hit_rate: number;
  version: number;
}

const ROOT_ID = 0;
const PREVIEW_CHARS = 80;

const CSS = `
.sgl-radix-tree ul { list-style: none; margin: 0; padding-left: 14px; border-left: 1px dotted var(--jp-border-color1, #bbb); }
.sgl-radix-tree > .sgl-tree-body > ul { border-left: none; padding-left: 0; }
.sgl-radix-tree .sgl-row { display: flex; gap: 6px; align-items: baseline; white-space: nowrap; padding: 1px 2px; border-radius: 3px; }
.sgl-radix-tree .sgl-row:hover { background: var(--jp-layout-color2, #f3f3f3); }
.sgl-radix-tree .sgl-caret { width: 1em; cursor: pointer; user-select: none; color: var(--jp-ui-font-color2, #777); flex: none; }
.sgl-radix-tree .sgl-bar { display: inline-block; height: 0.7em; background: var(--jp-brand-color2, #64b5f6); border-radius: 2px; flex: none; }
.sgl-radix-tree .sgl-meta { color: var(--jp-ui-font-color2, #616161); flex: none; }
.sgl-radix-tree .sgl-preview { overflow: hidden; text-overflow: ellipsis; background: var(--jp-layout-color2, #f7f7f7); padding: 0 3px; border-radius: 2px;
  font-family: var(--jp-code-font-family, ui-monospace, monospace), "Noto Sans Mono CJK SC", "Noto Sans CJK SC", sans-serif; }
.sgl-radix-tree .sgl-node.sgl-hit > .sgl-row { background: #fff3b0; color: #1f1f1f; }
.sgl-radix-tree .sgl-node.sgl-locked > .sgl-row .sgl-meta { color: var(--jp-brand-color1, #1976d2); }
.sgl-radix-tree .sgl-more { color: var(--jp-ui-font-color2, #777); font-style: italic; padding-left: 1.4em; }
.sgl-radix-tree .sgl-tree-body { max-height: 32em; overflow: auto; margin-top: 4px; }
`;

/** Children of every node, in creation (id) order so rows do not jump around between updates. */
export function childrenOf(nodes: TreeNode[]): Map<number, TreeNode[]> {
  const kids = new Map<number, TreeNode[]>();
  for (const node of nodes) {
    if (node.id === ROOT_ID) {
      continue;
    }
    const list = kids.get(node.parent) ?? [];
    list.push(node);
    kids.set(node.parent, list);
  }
  for (const list of kids.values()) {
    list.sort((a, b) => a.id - b.id);
  }
  return kids;
}

/** Number of nodes below `id` (not counting it). */
export function subtreeSize(kids: Map<number, TreeNode[]>, id: number): number {
  let count = 0;
  const stack = [...(kids.get(id) ?? [])];
  while (stack.length) {
    const node = stack.pop()!;
    count += 1;
    stack.push(...(kids.get(node.id) ?? []));
  }
  return count;
}

/** What one `draw` shares among its rows; `budget` counts down the nodes still allowed. */
interface DrawPass {
  kids: Map<number, TreeNode[]>;
  hot: Set<number>;
  maxTokens: number;
  budget: number;
}

/** Draws a snapshot; keeps which nodes the reader collapsed or expanded across redraws. */
export class RadixTreeDrawing {
  readonly root: HTMLDivElement;
  private readonly headEl: HTMLDivElement;
  private readonly bodyEl: HTMLDivElement;
  private readonly collapsed = new Set<number>();
  private readonly expanded = new Set<number>();
  private last: { tree: Partial<CacheSnapshot>; highlight: number[]; maxNodes: number } | null = null;

  constructor() {
    this.headEl = h('div', { class: 'sgl-head sgl-tree-head' });
    this.bodyEl = h('div', { class: 'sgl-tree-body' });
    this.root = widgetRoot('sgl-radix-tree', CSS, this.headEl, this.bodyEl);
    this.bodyEl.addEventListener('click', event => this.onClick(event));
  }

  draw(tree: Partial<CacheSnapshot> | null | undefined, highlight: number[] = [], maxNodes = 200): void {
    const snap: Partial<CacheSnapshot> = tree ?? {};
    this.last = { tree: snap, highlight, maxNodes };
    const nodes = Array.isArray(snap.nodes) ? snap.nodes : [];
    const kids = childrenOf(nodes);
    const count = nodes.filter(n => n.id !== ROOT_ID && n.id >= 0).length;
    this.headEl.replaceChildren(
      h('span', {}, 'RadixTree'),
      h('span', { class: 'sgl-tree-count' }, `${fmtNumber(count)} nodes`),
      h('span', { class: 'sgl-tree-tokens' }, `${fmtNumber(snap.total_tokens ?? 0)} tokens cached`),
      h('span', { class: 'sgl-tree-evictable' }, `${fmtNumber(snap.evictable_tokens ?? 0)} evictable`),
      h(
        'span',
        {
          class: 'sgl-tree-hit-rate',
          title: `hit ${snap.hit_tokens ?? 0} / miss ${snap.miss_tokens ?? 0} prompt tokens`
        },
        `hit rate ${fmtPercent(snap.hit_rate ?? 0)}`
      )
    );
    if (!kids.get(ROOT_ID)?.length) {
      this.bodyEl.replaceChildren(h('div', { class: 'sgl-muted sgl-tree-empty' }, '(cache is empty)'));
      return;
    }
    const pass: DrawPass = {
      kids,
      hot: new Set(highlight),
      maxTokens: Math.max(1, ...nodes.map(n => n.tokens || 0)),
      budget: Math.max(1, maxNodes)
    };
    this.bodyEl.replaceChildren(this.list(ROOT_ID, pass, 0));
  }

  private list(parent: number, pass: DrawPass, depth: number): HTMLUListElement {
    const ul = h('ul');
    const children = pass.kids.get(parent) ?? [];
    for (let i = 0; i < children.length; i++) {
      if (pass.budget <= 0) {
        const rest = children.slice(i);
        const hidden = rest.length + rest.reduce((acc, n) => acc + subtreeSize(pass.kids, n.id), 0);
        ul.appendChild(h('li', { class: 'sgl-more' }, `\u2026 ${fmtNumber(hidden)} more nodes`));
        break;
      }
      pass.budget -= 1;
      ul.appendChild(this.item(children[i], pass, depth));
    }
    return ul;
  }

  private item(node: TreeNode, pass: DrawPass, depth: number): HTMLLIElement {
    const children = pass.kids.get(node.id) ?? [];
    const isOpen = children.length > 0 && this.isOpen(node.id, depth);
    const classes = ['sgl-node'];
    if (pass.hot.has(node.id)) {
      classes.push('sgl-hit');
    }
    if ((node.ref ?? 0) > 0) {
      classes.push('sgl-locked');
    }
    if (node.id < 0) {
      classes.push('sgl-synthetic');
    }
    const barWidth = Math.max(2, Math.round((48 * (node.tokens || 0)) / pass.maxTokens));
    const caret = children.length ? (isOpen ? '\u25be' : '\u25b8') : '';
    const row = h(
      'div',
      { class: 'sgl-row' },
      h('span', { class: 'sgl-caret', 'data-toggle': children.length ? node.id : null }, caret),
      h('span', { class: 'sgl-bar', style: `width:${barWidth}px` }),
      h(
        'span',
        { class: 'sgl-meta', title: `node ${node.id}, last access ${node.last_access ?? '?'}` },
        `${fmtNumber(node.tokens ?? 0)} tok \u00b7 ref ${node.ref ?? 0} \u00b7 hits ${node.hits ?? 0}`
      ),
      h('span', { class: 'sgl-preview', title: String(node.text ?? '') }, previewText(node.text, PREVIEW_CHARS))
    );
    const li = h('li', { class: classes.join(' '), 'data-node-id': node.id }, row);
    if (children.length && isOpen) {
      li.appendChild(this.list(node.id, pass, depth + 1));
    } else if (children.length) {
      const hidden = subtreeSize(pass.kids, node.id);
      li.appendChild(h('div', { class: 'sgl-more' }, `${fmtNumber(hidden)} nodes below`));
    }
    return li;
  }

  /** Open unless the reader collapsed it; very deep levels start collapsed. */
  private isOpen(id: number, depth: number): boolean {
    if (this.collapsed.has(id)) {
      return false;
    }
    return depth < 12 || this.expanded.has(id);
  }

  private onClick(event: Event): void {
    const target = (event.target as Element | null)?.closest?.('[data-toggle]');
    if (!target) {
      return;
    }
    const id = Number(target.getAttribute('data-toggle'));
    if (this.collapsed.has(id)) {
      this.collapsed.delete(id);
      this.expanded.add(id);
    } else {
      this.collapsed.add(id);
      this.expanded.delete(id);
    }
    if (this.last) {
      this.draw(this.last.tree, this.last.highlight, this.last.maxNodes);
    }
  }
}

export function render(props: RenderProps): () => void {
  const { model } = props;
  const drawing = new RadixTreeDrawing();
  const draw = () =>
    drawing.draw(model.get('tree'), model.get('highlight') ?? [], Number(model.get('max_nodes') ?? 200));
  return mountView(props, drawing.root, draw, ['tree', 'highlight', 'max_nodes']);
}

export default { render };
