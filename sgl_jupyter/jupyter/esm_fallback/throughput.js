// Plain fallback view for ThroughputChart, used until labextension/ builds static/throughput.js.
function line(points, key, scale, w, h, colour) {
  if (!points.length) return "";
  const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1e-6);
  const xs = points.map((p) => ((p.t - t0) / (t1 - t0)) * w);
  const ys = points.map((p) => h - (p[key] / (scale || 1)) * h);
  return `<polyline fill="none" stroke="${colour}" points="${xs.map((x, i) => `${x.toFixed(1)},${ys[i].toFixed(1)}`).join(" ")}"/>`;
}
function draw(model, el) {
  const windowS = model.get("window_s") || 60;
  const all = model.get("points") || [];
  const last = all.length ? all[all.length - 1] : null;
  const points = last ? all.filter((p) => p.t >= last.t - windowS) : [];
  const maxTps = Math.max(1, ...points.map((p) => p.tokens_per_s));
  const maxReq = Math.max(1, ...points.map((p) => Math.max(p.running, p.queued)));
  const w = 480, h = 120;
  const svg = `<svg width="${w}" height="${h}" style="border:1px solid #eee">` +
    line(points, "tokens_per_s", maxTps, w, h, "#1f77b4") + line(points, "running", maxReq, w, h, "#2ca02c") +
    line(points, "queued", maxReq, w, h, "#ff7f0e") + line(points, "hit_rate", 1, w, h, "#9467bd") + `</svg>`;
  const text = last ? `${last.tokens_per_s.toFixed(1)} tok/s, running ${last.running}, queued ${last.queued}, ` +
    `hit rate ${(100 * last.hit_rate).toFixed(1)}%` : "(no steps yet)";
  el.innerHTML = `<div style="font-family:monospace;font-size:12px;border:1px solid #ddd;padding:6px">` +
    `<div class="sgl-tps">${text}</div>${svg}</div>`;
}
export default {
  render({ model, el }) {
    const redraw = () => draw(model, el);
    model.on("change:points", redraw);
    model.on("change:window_s", redraw);
    redraw();
    return () => { model.off("change:points", redraw); model.off("change:window_s", redraw); };
  },
};
