// Plain fallback view for RadixTreeView, used until labextension/ builds static/radix_tree.js.
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function draw(model, el) {
  const tree = model.get("tree") || {};
  const hot = new Set(model.get("highlight") || []);
  const kids = {};
  for (const n of tree.nodes || []) (kids[n.parent] = kids[n.parent] || []).push(n);
  const walk = (id) => {
    const items = (kids[id] || []).map((n) => {
      const text = String(n.text || "").replace(/\n/g, "\u21b5");
      return `<li class="sgl-node" data-node-id="${n.id}" style="${hot.has(n.id) ? "background:#fff3b0" : ""}">` +
        `<span style="color:#666">[${n.tokens} tok, ref ${n.ref}, hits ${n.hits}]</span> <code>${esc(text.slice(0, 60))}</code>${walk(n.id)}</li>`;
    });
    return items.length ? `<ul style="margin:0;padding-left:16px">${items.join("")}</ul>` : "";
  };
  const count = (tree.nodes || []).filter((n) => n.id > 0).length;
  const head = `RadixTree: ${count} nodes, ${tree.total_tokens || 0} tokens cached, hit rate ${(100 * (tree.hit_rate || 0)).toFixed(1)}%`;
  el.innerHTML = `<div style="font-family:monospace;font-size:12px;border:1px solid #ddd;padding:6px">` +
    `<div style="color:#666">${esc(head)}</div>${walk(0)}</div>`;
}
export default {
  render({ model, el }) {
    const redraw = () => draw(model, el);
    model.on("change:tree", redraw);
    model.on("change:highlight", redraw);
    redraw();
    return () => { model.off("change:tree", redraw); model.off("change:highlight", redraw); };
  },
};
