// An SVG line chart for time-series answers: the first column is the time (ISO-8601 UTC strings,
// or plain numbers), every other numeric column is one series. Axes carry ticks and titles; each
// point has a tooltip; a gap in the data (null) is a gap in the line.

import { el, formatNumber, svg, uniqueId } from './dom.js';

const WIDTH = 800;
const HEIGHT = 360;
const MARGIN = { top: 16, right: 24, bottom: 60, left: 84 };
const SERIES_CLASSES = 8; // .series-0 .. .series-7 in console.css
const MAX_MARKERS = 150; // above this, points have no dots (the line alone reads better)

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const TIME_STEPS = [MINUTE, 5 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR,
  6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY];

function xValue(value) {
  if (typeof value === 'number' && Number.isFinite(value)) return value;
  if (typeof value === 'string') {
    const ms = Date.parse(value);
    return Number.isNaN(ms) ? null : ms;
  }
  return null;
}

function niceStep(span, count) {
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / magnitude;
  const nice = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
  return nice * magnitude;
}

function niceTicks(min, max, count) {
  const step = niceStep(max - min, count);
  const first = Math.floor(min / step);
  const last = Math.ceil(max / step);
  const ticks = [];
  for (let i = first; i <= last; i += 1) ticks.push(Number((i * step).toPrecision(12)));
  return ticks;
}

function timeTicks(min, max) {
  const step = TIME_STEPS.find((s) => (max - min) / s <= 7) ?? TIME_STEPS.at(-1);
  const ticks = [];
  for (let t = Math.ceil(min / step) * step; t <= max; t += step) ticks.push(t);
  return { ticks, step };
}

const pad = (n) => String(n).padStart(2, '0');

function timeLabel(ms, step, spansDays) {
  const d = new Date(ms);
  const day = `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  const clock = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  if (step >= DAY) return day;
  return spansDays ? `${day} ${clock}` : clock;
}

function fullTime(ms) {
  return new Date(ms).toISOString().replace('T', ' ').replace(/:00\.000Z$|\.000Z$/, '') + ' UTC';
}

const isNumber = (v) => typeof v === 'number' && Number.isFinite(v);
const isMissing = (v) => v === null || v === undefined;

/**
 * The lines to draw: [{name, points: [[x, y or null], ...] sorted by x}].
 * Wide rows (time, a, b, ...) give one line per numeric column. Long rows (time, label, value)
 * - one text column beside the numbers - give one line per label (and numeric column).
 */
export function chartSeries(columns, rows) {
  const xs = rows.map((row) => xValue(row[0]));
  const kinds = columns.map((_, i) => {
    const present = rows.map((row) => row[i]).filter((v) => !isMissing(v));
    if (i === 0 || present.length === 0) return 'other';
    if (present.every(isNumber)) return 'number';
    return present.every((v) => typeof v === 'string') ? 'label' : 'other';
  });
  const numeric = kinds.flatMap((kind, i) => (kind === 'number' ? [i] : []));
  const labels = kinds.flatMap((kind, i) => (kind === 'label' ? [i] : []));
  const groups = new Map(); // series name -> points
  const add = (name, x, y) => {
    if (!groups.has(name)) groups.set(name, []);
    groups.get(name).push([x, isNumber(y) ? y : null]);
  };
  rows.forEach((row, r) => {
    if (xs[r] === null) return;
    for (const i of numeric) {
      if (labels.length === 1) {
        const label = String(row[labels[0]] ?? '—');
        add(numeric.length === 1 ? label : `${label} · ${columns[i]}`, xs[r], row[i]);
      } else {
        add(columns[i], xs[r], row[i]);
      }
    }
  });
  const series = [...groups].map(([name, points]) => ({ name, points: points.sort((a, b) => a[0] - b[0]) }));
  return { series, valueName: numeric.length === 1 ? columns[numeric[0]] : null };
}

/** A <figure> with the chart and its legend, or null when the rows make no line. */
export function timeSeriesChart(columns, rows) {
  const isTime = rows.some((row) => typeof row[0] === 'string');
  const { series, valueName } = chartSeries(columns, rows);
  const xsAll = series.flatMap((s) => s.points.map(([x]) => x));
  const values = series.flatMap((s) => s.points.map(([, y]) => y).filter((y) => y !== null));
  const pointCount = series.reduce((n, s) => n + s.points.length, 0);
  if (series.length === 0 || new Set(xsAll).size < 2 || values.length === 0) return null;

  const xMin = Math.min(...xsAll);
  const xMax = Math.max(...xsAll);
  let yMin = Math.min(0, ...values);
  let yMax = Math.max(...values);
  if (yMax === yMin) yMax = yMin + 1;
  const yTicks = niceTicks(yMin, yMax, 5);
  [yMin, yMax] = [yTicks[0], yTicks.at(-1)];

  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const sx = (x) => MARGIN.left + ((x - xMin) / (xMax - xMin)) * plotW;
  const sy = (y) => MARGIN.top + plotH - ((y - yMin) / (yMax - yMin)) * plotH;
  const round = (n) => Math.round(n * 10) / 10;

  const titleId = uniqueId('chart-title');
  const names = series.map((s) => s.name).join(', ');
  const root = svg('svg', {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: 'chart-svg', role: 'img', 'aria-labelledby': titleId,
  }, svg('title', { id: titleId }, `Line chart of ${names} by ${columns[0]}, ${pointCount} points`));

  // y axis: grid lines and values
  const yAxis = svg('g', { class: 'axis y-axis' });
  for (const tick of yTicks) {
    const y = round(sy(tick));
    yAxis.append(
      svg('line', { class: 'grid', x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y, y2: y }),
      svg('text', { x: MARGIN.left - 10, y, dy: '0.35em', 'text-anchor': 'end' }, formatNumber(tick)),
    );
  }
  // x axis: time ticks aligned to round UTC instants, or nice numbers
  const xAxis = svg('g', { class: 'axis x-axis' });
  const baseline = MARGIN.top + plotH;
  xAxis.append(svg('line', { class: 'baseline', x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: baseline, y2: baseline }));
  const { ticks: xTicks, step } = isTime ? timeTicks(xMin, xMax) : { ticks: niceTicks(xMin, xMax, 6).filter((t) => t >= xMin && t <= xMax), step: 0 };
  const spansDays = new Date(xMin).getUTCDate() !== new Date(xMax).getUTCDate() || xMax - xMin >= DAY;
  for (const tick of xTicks) {
    const x = round(sx(tick));
    xAxis.append(
      svg('line', { class: 'tick', x1: x, x2: x, y1: baseline, y2: baseline + 6 }),
      svg('text', { x, y: baseline + 24, 'text-anchor': 'middle' }, isTime ? timeLabel(tick, step, spansDays) : formatNumber(tick)),
    );
  }
  xAxis.append(svg('text', { class: 'axis-title', x: MARGIN.left + plotW / 2, y: HEIGHT - 8, 'text-anchor': 'middle' },
    isTime ? `${columns[0]} (UTC)` : columns[0]));
  if (valueName) {
    const cx = 18;
    const cy = MARGIN.top + plotH / 2;
    yAxis.append(svg('text', { class: 'axis-title', x: cx, y: cy, 'text-anchor': 'middle', transform: `rotate(-90 ${cx} ${cy})` }, valueName));
  }
  root.append(yAxis, xAxis);

  // one line per series, broken where a value is missing
  series.forEach((s, n) => {
    const colour = `series-${n % SERIES_CLASSES}`;
    let d = '';
    let pen = 'M';
    const dots = svg('g', { class: ['dots', colour] });
    for (const [x, v] of s.points) {
      if (v === null) {
        pen = 'M';
        continue;
      }
      d += `${pen}${round(sx(x))},${round(sy(v))}`;
      pen = 'L';
      if (pointCount <= MAX_MARKERS) {
        const label = `${s.name}: ${formatNumber(v)} at ${isTime ? fullTime(x) : formatNumber(x)}`;
        dots.append(svg('circle', { class: 'dot', cx: round(sx(x)), cy: round(sy(v)), r: 4 }, svg('title', {}, label)));
      }
    }
    const dashed = n >= SERIES_CLASSES && 'dashed'; // colours repeat: the line style tells them apart
    root.append(svg('path', { class: ['line', colour, dashed], d, 'data-series': s.name }), dots);
  });

  const legend = el('ul', { class: 'legend' }, series.map((s, n) =>
    el('li', {}, el('span', { class: ['swatch', `series-${n % SERIES_CLASSES}`, n >= SERIES_CLASSES && 'dashed'], 'aria-hidden': 'true' }), s.name)));
  return el('figure', { class: 'chart' }, root, el('figcaption', {}, legend));
}
