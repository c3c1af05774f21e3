// The twin's prediction for a proposed signal change (the action's `what_if`, made by
// streaming/whatif.py): two small horizontal bar charts — average delay and mean queue — with
// the current plan and the changed one side by side for each approach of the intersection and for
// the whole network, the numbers on the bars, and a table of every figure.

import { el, formatNumber, svg, uniqueId } from './dom.js';

const WIDTH = 640;
const LABEL_W = 290;
const VALUE_W = 100;
const BAR_H = 18;
const BAR_GAP = 3;
const GROUP_GAP = 14;
const TOP = 8;
const MAX_LABEL = 30; // characters; the full label is in the tooltip

const PLANS = [
  { key: 'current', name: 'current plan', colour: 'series-0' },
  { key: 'changed', name: 'changed plan', colour: 'series-1' },
];
const METRICS = [
  { key: 'delay_s', title: 'Average delay', unit: 's per vehicle', short: 's' },
  { key: 'queue_mean', title: 'Mean queue', unit: 'vehicles halting', short: 'veh' },
];

const isNumber = (v) => typeof v === 'number' && Number.isFinite(v);
const short = (text) => (text.length > MAX_LABEL ? `${text.slice(0, MAX_LABEL - 1)}…` : text);

/** The areas to chart: every approach of the intersection, then the network. */
function chartAreas(whatIf) {
  const areas = Array.isArray(whatIf.areas) ? whatIf.areas : [];
  return areas.filter((a) => a && (a.kind === 'approach' || a.kind === 'network') && a.current && a.changed)
    .map((a) => ({ ...a, short: `${a.served ? '● ' : ''}${String(a.short_label ?? a.label ?? '')}`, label: String(a.label ?? '') }));
}

function barChart(areas, metric) {
  const values = areas.flatMap((a) => PLANS.map((p) => a[p.key]?.[metric.key])).filter(isNumber);
  const max = Math.max(1e-9, ...values);
  const groupH = PLANS.length * (BAR_H + BAR_GAP) + GROUP_GAP;
  const height = TOP + areas.length * groupH;
  const barW = WIDTH - LABEL_W - VALUE_W;
  const titleId = uniqueId('what-if-title');
  const root = svg('svg', {
    viewBox: `0 0 ${WIDTH} ${height}`, class: 'what-if-svg', role: 'img', 'aria-labelledby': titleId,
    'data-metric': metric.key,
  }, svg('title', { id: titleId }, `${metric.title} (${metric.unit}), current and changed plan`));
  areas.forEach((area, g) => {
    const y0 = TOP + g * groupH;
    root.append(svg('text', { class: ['area-label', area.kind === 'network' && 'network'], x: LABEL_W - 12, y: y0 + BAR_H, 'text-anchor': 'end' },
      short(area.short), svg('title', {}, area.label)));
    PLANS.forEach((plan, i) => {
      const value = area[plan.key]?.[metric.key];
      const y = y0 + i * (BAR_H + BAR_GAP);
      const width = isNumber(value) ? Math.max(1, (value / max) * barW) : 0;
      const text = isNumber(value) ? `${formatNumber(value)} ${metric.short}` : 'no vehicles';
      root.append(
        svg('rect', {
          class: ['bar', plan.colour], x: LABEL_W, y, width: Math.round(width * 10) / 10, height: BAR_H, rx: 2,
          'data-area': area.kind === 'network' ? 'network' : (area.edge_id ?? area.label),
          'data-plan': plan.key, 'data-value': isNumber(value) ? value : '',
        }, svg('title', {}, `${area.label}, ${plan.name}: ${text}`)),
        svg('text', { class: 'bar-value', x: LABEL_W + width + 8, y: y + BAR_H - 4 }, text),
      );
    });
  });
  return el('figure', { class: 'what-if-chart' },
    el('figcaption', { class: 'what-if-metric' }, `${metric.title} (${metric.unit})`), root);
}

function signed(value, unit) {
  if (!isNumber(value)) return '—';
  return `${value > 0 ? '+' : ''}${formatNumber(value)} ${unit}`;
}

function numbersTable(whatIf) {
  const areas = Array.isArray(whatIf.areas) ? whatIf.areas : [];
  const cell = (area, plan, key) => formatNumber(area[plan]?.[key] ?? null);
  return el('details', { class: 'what-if-numbers' },
    el('summary', {}, 'All figures'),
    el('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'What-if figures' },
      el('table', { class: 'rows' },
        el('thead', {}, el('tr', {},
          ['Where', 'Delay now (s)', 'Delay changed (s)', 'Δ delay', 'Queue now', 'Queue changed', 'Max queue now / changed', 'Vehicles']
            .map((c, i) => el('th', { scope: 'col', class: i ? 'num' : null }, c)))),
        el('tbody', {}, areas.map((a) => el('tr', {},
          el('th', { scope: 'row' }, `${a.served ? '● ' : ''}${String(a.label ?? '')}`),
          el('td', { class: 'num' }, cell(a, 'current', 'delay_s')),
          el('td', { class: 'num' }, cell(a, 'changed', 'delay_s')),
          el('td', { class: 'num' }, signed(a.difference?.delay_s, 's')),
          el('td', { class: 'num' }, cell(a, 'current', 'queue_mean')),
          el('td', { class: 'num' }, cell(a, 'changed', 'queue_mean')),
          el('td', { class: 'num' }, `${cell(a, 'current', 'queue_max')} / ${cell(a, 'changed', 'queue_max')}`),
          el('td', { class: 'num' }, cell(a, 'current', 'vehicles'))))))));
}

/** The prediction as nodes: summary line, delay and queue charts, legend, figures table. */
export function whatIfView(whatIf) {
  if (typeof whatIf?.error === 'string') {
    return [el('p', { class: 'what-if-error' }, `No prediction: ${whatIf.error}`)];
  }
  const areas = chartAreas(whatIf);
  const green = whatIf.green_s ?? {};
  const cycle = whatIf.cycle_s ?? {};
  const facts = [
    isNumber(green.current) && isNumber(green.changed) ? `green ${formatNumber(green.current)} → ${formatNumber(green.changed)} s` : null,
    isNumber(cycle.current) && isNumber(cycle.changed) ? `cycle ${formatNumber(cycle.current)} → ${formatNumber(cycle.changed)} s` : null,
    isNumber(whatIf.simulated_minutes) ? `${formatNumber(whatIf.simulated_minutes)} simulated minutes, same demand` : null,
    isNumber(whatIf.wall_s) ? `computed in ${formatNumber(whatIf.wall_s)} s` : null,
  ].filter(Boolean).join(' · ');
  const nodes = [];
  if (whatIf.summary) nodes.push(el('p', { class: 'what-if-summary' }, String(whatIf.summary)));
  if (facts) nodes.push(el('p', { class: 'hint' }, facts));
  if (areas.length) {
    nodes.push(el('div', { class: 'what-if-charts' }, METRICS.map((m) => barChart(areas, m))));
    nodes.push(el('ul', { class: 'legend' },
      PLANS.map((p) => el('li', {}, el('span', { class: ['swatch', p.colour], 'aria-hidden': 'true' }), p.name)),
      areas.some((a) => a.served) ? el('li', {}, `● served by phase ${formatNumber(whatIf.phase_index ?? null)}`) : null));
    nodes.push(numbersTable(whatIf));
  }
  return nodes;
}
