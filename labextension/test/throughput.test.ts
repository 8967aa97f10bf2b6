import { describe, expect, it } from 'vitest';

import { niceMax, Point, render, visiblePoints } from '../src/widgets/throughput';
import { FakeModel, nextFrame } from './fake_model';

function pt(t: number, tps: number, running = 1, queued = 0, hit = 0.5): Point {
  return { t, tokens_per_s: tps, running, queued, hit_rate: hit };
}

describe('throughput helpers', () => {
  it('keeps the points of the last window, sorted by time', () => {
    const pts = [pt(100, 1), pt(10, 2), pt(50, 3), pt(95, 4)];
    expect(visiblePoints(pts, 10).map(p => p.t)).toEqual([95, 100]);
    expect(visiblePoints(pts, 1000).map(p => p.t)).toEqual([10, 50, 95, 100]);
    expect(visiblePoints([], 60)).toEqual([]);
    expect(visiblePoints(pts, 0).map(p => p.t)).toEqual([10, 50, 95, 100]); // 0: all since load
  });

  it('rounds axis maxima up to a readable number', () => {
    expect(niceMax(0)).toBe(1);
    expect(niceMax(87)).toBe(100);
    expect(niceMax(1234)).toBe(1500);
    expect(niceMax(3)).toBe(3);
  });
});

describe('ThroughputChart', () => {
  it('shows the latest values and one line per series', async () => {
    const model = new FakeModel({ points: [], window_s: 60 });
    const el = document.createElement('div');
    render({ model, el });
    expect(el.querySelector('.sgl-tps')!.textContent).toBe('0.0 tok/s');
    expect(el.querySelectorAll('polyline').length).toBe(0);
    model.kernelSet('points', [pt(0, 10, 2, 1, 0), pt(1, 35.25, 4, 3, 0.25)]);
    await nextFrame();
    expect(el.querySelector('.sgl-tps')!.textContent).toBe('35.3 tok/s');
    expect(el.querySelector('.sgl-running')!.textContent).toBe('running 4');
    expect(el.querySelector('.sgl-queued')!.textContent).toBe('queued 3');
    expect(el.querySelector('.sgl-hit-rate')!.textContent).toBe('hit rate 25.0%');
    const lines = [...el.querySelectorAll('polyline')];
    expect(lines.length).toBe(4);
    expect(lines[0].getAttribute('points')!.split(' ').length).toBe(2);
    expect(el.querySelector('.sgl-generated')!.textContent).toBe('');
    model.kernelSet('points', [{ ...pt(0, 10), generated: 40 }, { ...pt(1, 0, 0, 0, 0.5), generated: 1234 }]);
    await nextFrame();
    expect(el.querySelector('.sgl-generated')!.textContent).toBe('1,234 tokens generated');
  });

  it('scales every value into its pane (no point leaves the plot)', () => {
    const model = new FakeModel({ points: [pt(0, 5), pt(1, 500), pt(2, 50)], window_s: 60 });
    const el = document.createElement('div');
    render({ model, el });
    const ys = el.querySelector('.sgl-series-tokens_per_s')!.getAttribute('points')!
      .split(' ').map(p => Number(p.split(',')[1]));
    // the tokens/s pane: 90 px tall below its 12 px label
    expect(Math.min(...ys)).toBeGreaterThanOrEqual(12);
    expect(Math.max(...ys)).toBeLessThanOrEqual(12 + 90);
  });
});
