// Plain fallback view for TokenStream, used until labextension/ builds static/token_stream.js.
// Renders the same synced state as the static HTML fallback (sgl_jupyter/jupyter/fallback.py).
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function colour(lp) {
  if (lp === null || lp === undefined || !isFinite(lp)) return "transparent";
  return `rgba(220, 60, 60, ${((1 - Math.exp(Math.min(lp, 0))) * 0.6).toFixed(3)})`;
}
function draw(model, el) {
  const streams = model.get("streams") || {};
  const order = model.get("order") || [];
  const showLp = model.get("show_logprobs");
  let out = `<div style="color:#666">TokenStream &middot; <span class="sgl-status">${esc(model.get("status"))}</span>
    <label style="margin-left:8px"><input type="checkbox" class="sgl-lp-toggle" ${showLp ? "checked" : ""}/> logprobs</label></div>`;
  if (model.get("error")) out += `<pre style="color:#b00;white-space:pre-wrap">${esc(model.get("error"))}</pre>`;
  for (const name of order) {
    const s = streams[name] || {};
    const tokens = s.tokens || [];
    const shown = tokens.map((t) => t.t).join("");
    let body = esc(s.text || "");
    if (tokens.length && (s.text || "").endsWith(shown)) {
      body = esc((s.text || "").slice(0, (s.text || "").length - shown.length)) + tokens.map((t) =>
        `<span class="sgl-token" style="background:${showLp ? colour(t.lp) : "transparent"}"` +
        `${t.lp !== null && t.lp !== undefined ? ` title="logprob ${Number(t.lp).toFixed(3)}"` : ""}>${esc(t.t)}</span>`).join("");
    }
    const foot = [`${s.n_tokens || 0} tokens`, `${(s.tokens_per_s || 0).toFixed(1)} tok/s`,
      s.finish_reason ? `finish: ${s.finish_reason}` : (s.done ? "" : "running")].filter(Boolean).join(", ");
    out += `<div class="sgl-stream" data-name="${esc(name)}"><b>${esc(name)}</b>
      <pre style="white-space:pre-wrap;margin:2px 0">${body}</pre><div style="color:#666">${esc(foot)}</div></div>`;
  }
  el.innerHTML = `<div style="font-family:monospace;font-size:12px;border:1px solid #ddd;padding:6px">${out}</div>`;
  const toggle = el.querySelector(".sgl-lp-toggle");
  if (toggle) toggle.addEventListener("change", () => { model.set("show_logprobs", toggle.checked); model.save_changes(); });
}
export default {
  render({ model, el }) {
    const redraw = () => draw(model, el);
    for (const k of ["streams", "order", "status", "error", "show_logprobs"]) model.on(`change:${k}`, redraw);
    redraw();
    return () => { for (const k of ["streams", "order", "status", "error", "show_logprobs"]) model.off(`change:${k}`, redraw); };
  },
};
