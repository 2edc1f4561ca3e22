// Line charts over uPlot (vendored; loaded as the global `uPlot`): one chart per group of metrics, x = step.
// A chart keeps its uPlot instance and is given new data with setData, so live points do not redraw the page.
import { useEffect, useRef } from "../vendor/preact-htm.module.js";
import { html } from "./ui.js";

const COLOURS = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2"];

/** Exponential moving average, the way TensorBoard smooths (debiased); nulls stay nulls. */
export function smooth(values, weight) {
  if (!weight) return values;
  let last = 0, count = 0;
  return values.map((v) => {
    if (v === null || v === undefined || !Number.isFinite(v)) return v ?? null;
    last = last * weight + (1 - weight) * v;
    count += 1;
    return last / (1 - weight ** count);
  });
}

/**
 * The rows (one per step: {step, <name>: value}) as uPlot's columns for `names`: [steps, series...]. Steps where
 * none of the names has a value are left out.
 */
export function columns(rows, names) {
  const kept = rows.filter((r) => names.some((n) => r[n] !== undefined && r[n] !== null));
  return [kept.map((r) => r.step), ...names.map((n) => kept.map((r) => (r[n] === undefined ? null : r[n])))];
}

/** An axis label that stays readable from 1e-6 (learning rates) to 1e6. */
export function tick(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a < 1e-2 || a >= 1e5) return v.toExponential(1);
  return Number(v.toPrecision(3)).toString();
}

export function Chart({ title, rows, names, labels = {}, log = false, smoothing = 0, unit = "" }) {
  const box = useRef();
  const plot = useRef();
  const present = names.filter((n) => rows.some((r) => r[n] !== undefined && r[n] !== null));
  const key = `${present.join(",")}|${log}`;

  useEffect(() => {
    if (!present.length) return undefined;
    const width = () => Math.max(260, box.current.clientWidth - 8);
    const opts = {
      width: width(), height: 220,
      scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
      axes: [{ label: "step" }, { label: unit, size: 64, values: (u, splits) => splits.map(tick) }],
      series: [{ label: "step" }, ...present.map((n, i) => ({
        label: labels[n] || n, stroke: COLOURS[i % COLOURS.length], width: 1.5, spanGaps: true,
        points: { show: false },
      }))],
      legend: { live: false },
    };
    plot.current = new window.uPlot(opts, [[]], box.current);
    const resize = new ResizeObserver(() => plot.current?.setSize({ width: width(), height: 220 }));
    resize.observe(box.current);
    return () => { resize.disconnect(); plot.current?.destroy(); plot.current = null; };
  }, [key]);

  useEffect(() => {
    if (!plot.current) return;
    const [x, ...ys] = columns(rows, present);
    const shown = ys.map((y) => {
      const s = smooth(y, smoothing);
      return log ? s.map((v) => (v !== null && v > 0 ? v : null)) : s;
    });
    plot.current.setData([x, ...shown]);
  }, [rows, key, smoothing]);

  const last = present.map((n) => [n, [...rows].reverse().find((r) => r[n] !== undefined && r[n] !== null)?.[n]]);
  return html`<figure class="chart" aria-label=${title}>
    <figcaption>${title}${last.length > 0 && html`<span class="latest">
      ${last.map(([n, v]) => html` ${labels[n] || n}: <b>${v === undefined ? "–" : Number(v).toPrecision(4)}</b>`)}</span>`}</figcaption>
    ${present.length ? html`<div ref=${box} class="plot" data-points=${rows.length}></div>`
      : html`<p class="hint">No points yet.</p>`}
  </figure>`;
}
