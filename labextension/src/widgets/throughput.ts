/**
 * ThroughputChart front end: tokens/s, running and queued requests and the cache hit rate over time.
 *
 * Synced traits (widget contract): `points` [{t, tokens_per_s, running, queued, hit_rate, generated?}] (t in
 * seconds since the engine loaded; `generated`: tokens generated so far) and `window_s` (seconds shown; 0: all). Two SVG panes share the time axis: tokens/s
 * on top; running/queued (left scale) and hit rate (right scale, 0-100%) below. The latest values are
 * text (`.sgl-tps`, `.sgl-running`, `.sgl-queued`, `.sgl-hit-rate`).
 */
import {
  RenderProps,
  fmtNumber,
  fmtPercent,
  fmtRate,
  h,
  mountView,
  s,
  widgetRoot
} from './common';

export interface Point {
  t: number;
  tokens_per_s: number;
  running: number;
  queued: number;
  hit_rate: number;
  generated?: number;
}

export const COLOURS = {
  tokens_per_s: '#1f77b4',
  running: '#2ca02c',
  queued: '#ff7f0e',
  hit_rate: '#9467bd'
};

const W = 560;
const PANE_H = 90;
const GAP = 22;
const LABEL_H = 12; // a pane's label sits above it, clear of lines at the top of the scale
const PAD_L = 44;
const PAD_R = 40;

const CSS = `
.sgl-throughput svg { width: 100%; max-width: ${W}px; height: auto; display: block; margin-top: 4px; }
.sgl-throughput .sgl-axis { stroke: var(--jp-border-color1, #bbb); stroke-width: 1; }
.sgl-throughput text { font-size: 10px; fill: var(--jp-ui-font-color2, #616161); font-family: inherit; }
.sgl-throughput .sgl-key { display: inline-flex; align-items: center; gap: 3px; }
.sgl-throughput .sgl-key i { display: inline-block; width: 10px; height: 3px; }
`;

/** Points inside the window ending at the newest point (every point if `windowS` <= 0), sorted by time. */
export function visiblePoints(points: Point[], windowS: number): Point[] {
  const clean = points
    .filter(p => p && Number.isFinite(Number(p.t)))
    .slice()
    .sort((a, b) => a.t - b.t);
  if (!clean.length) {
    return [];
  }
  if (!(windowS > 0)) {
    return clean;
  }
  const end = clean[clean.length - 1].t;
  return clean.filter(p => p.t >= end - windowS);
}

/** A "nice" upper bound for an axis: 0 -> 1, 87 -> 100, 1234 -> 1500. */
export function niceMax(value: number): number {
  if (!(value > 0)) {
    return 1;
  }
  const exp = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) {
    if (value <= step * exp) {
      return step * exp;
    }
  }
  return 10 * exp;
}

/** SVG polyline points for one series, scaled into a pane. */
export function polyline(
  points: Point[],
  key: keyof Point,
  t0: number,
  t1: number,
  yMax: number,
  top: number,
  height: number
): string {
  const span = Math.max(t1 - t0, 1e-6);
  const plotW = W - PAD_L - PAD_R;
  return points
    .map(p => {
      const x = PAD_L + ((p.t - t0) / span) * plotW;
      const v = Math.max(0, Number(p[key]) || 0);
      const y = top + height - (Math.min(v, yMax) / yMax) * height;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(' ');
}

function pane(top: number, label: string, max: string, rightMax?: string): SVGElement[] {
  const parts: SVGElement[] = [
    s('line', { class: 'sgl-axis', x1: PAD_L, y1: top + PANE_H, x2: W - PAD_R, y2: top + PANE_H }),
    s('line', { class: 'sgl-axis', x1: PAD_L, y1: top, x2: PAD_L, y2: top + PANE_H }),
    s('text', { x: PAD_L - 4, y: top + 8, 'text-anchor': 'end' }, max),
    s('text', { x: PAD_L - 4, y: top + PANE_H, 'text-anchor': 'end' }, '0'),
    s('text', { x: PAD_L, y: top - 3 }, label)
  ];
  if (rightMax !== undefined) {
    parts.push(
      s('line', { class: 'sgl-axis', x1: W - PAD_R, y1: top, x2: W - PAD_R, y2: top + PANE_H }),
      s('text', { x: W - PAD_R + 4, y: top + 8 }, rightMax),
      s('text', { x: W - PAD_R + 4, y: top + PANE_H }, '0%')
    );
  }
  return parts;
}

function series(points: Point[], key: keyof Point, t0: number, t1: number, yMax: number, top: number): SVGElement {
  return s('polyline', {
    class: `sgl-series sgl-series-${key}`,
    fill: 'none',
    stroke: COLOURS[key as keyof typeof COLOURS],
    'stroke-width': 1.5,
    points: polyline(points, key, t0, t1, yMax, top, PANE_H)
  });
}

export class ThroughputDrawing {
  readonly root: HTMLDivElement;
  private readonly valuesEl: HTMLDivElement;
  private readonly svgHolder: HTMLDivElement;

  constructor() {
    this.valuesEl = h('div', { class: 'sgl-head sgl-values' });
    this.svgHolder = h('div', { class: 'sgl-chart' });
    this.root = widgetRoot('sgl-throughput', CSS, this.valuesEl, this.svgHolder);
  }

  draw(points: Point[], windowS: number): void {
    const shown = visiblePoints(Array.isArray(points) ? points : [], windowS);
    const last = shown.length ? shown[shown.length - 1] : null;
    const key = (name: keyof typeof COLOURS, cls: string, text: string) =>
      h('span', { class: 'sgl-key' }, h('i', { style: `background:${COLOURS[name]}` }), h('span', { class: cls }, text));
    this.valuesEl.replaceChildren(
      key('tokens_per_s', 'sgl-tps', `${fmtRate(last?.tokens_per_s ?? 0)} tok/s`),
      key('running', 'sgl-running', `running ${fmtNumber(last?.running ?? 0)}`),
      key('queued', 'sgl-queued', `queued ${fmtNumber(last?.queued ?? 0)}`),
      key('hit_rate', 'sgl-hit-rate', `hit rate ${fmtPercent(last?.hit_rate ?? 0)}`),
      h('span', { class: 'sgl-generated' }, last?.generated !== undefined ? `${fmtNumber(last.generated)} tokens generated` : ''),
      h(
        'span',
        { class: 'sgl-muted' },
        last ? `${shown.length} points, ${windowS > 0 ? `last ${windowS} s` : 'since load'}` : '(no steps yet)'
      )
    );
    const height = LABEL_H + 2 * PANE_H + GAP + 16;
    const svg = s('svg', { viewBox: `0 0 ${W} ${height}`, role: 'img', 'aria-label': 'throughput over time' });
    if (shown.length) {
      const t1 = last!.t;
      const t0 = Math.min(shown[0].t, t1 - 1e-6);
      const tpsMax = niceMax(Math.max(...shown.map(p => Number(p.tokens_per_s) || 0)));
      const reqMax = niceMax(Math.max(...shown.map(p => Math.max(Number(p.running) || 0, Number(p.queued) || 0))));
      const upper = LABEL_H;
      const lower = upper + PANE_H + GAP;
      svg.append(
        ...pane(upper, 'tokens/s', fmtNumber(tpsMax)),
        series(shown, 'tokens_per_s', t0, t1, tpsMax, upper),
        ...pane(lower, 'requests \u00b7 hit rate', fmtNumber(reqMax), '100%'),
        series(shown, 'running', t0, t1, reqMax, lower),
        series(shown, 'queued', t0, t1, reqMax, lower),
        series(shown, 'hit_rate', t0, t1, 1, lower),
        s('text', { x: PAD_L, y: height - 2 }, `${fmtNumber(t0, 1)} s`),
        s('text', { x: W - PAD_R, y: height - 2, 'text-anchor': 'end' }, `${fmtNumber(t1, 1)} s`)
      );
    }
    this.svgHolder.replaceChildren(svg);
  }
}

export function render(props: RenderProps): () => void {
  const { model } = props;
  const drawing = new ThroughputDrawing();
  const draw = () => drawing.draw(model.get('points') ?? [], Number(model.get('window_s') ?? 60));
  return mountView(props, drawing.root, draw, ['points', 'window_s']);
}

export default { render };
