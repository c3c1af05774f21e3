// A map of the places an answer names, drawn as SVG from GeoJSON (EPSG:4326) in Web Mercator,
// fitted to their bounds. No tiles: the service runs without internet, so the map shows the
// zone outlines themselves, the zone a point lies in as context, and a scale bar.

import { el, svg, uniqueId } from './dom.js';

const WIDTH = 800;
const HEIGHT = 520;
const PADDING = 36;
const MIN_SPAN = 0.0004; // mercator radians (~1.6 km at Cologne): a lone point gets surroundings
const MAX_LABELS = 12; // more labels than this would cover the map; tooltips and legend remain
const EARTH_RADIUS_M = 6_371_008;

/** Web Mercator in radians: [x, y] with y growing north. */
function mercator([lon, lat]) {
  const phi = (Math.max(-85, Math.min(85, lat)) * Math.PI) / 180;
  return [(lon * Math.PI) / 180, Math.log(Math.tan(Math.PI / 4 + phi / 2))];
}

/** The rings of a Polygon or MultiPolygon, each a list of [lon, lat]. */
function polygons(geometry) {
  if (geometry.type === 'Polygon') return [geometry.coordinates];
  if (geometry.type === 'MultiPolygon') return geometry.coordinates;
  return [];
}

function ringArea(points) {
  let area = 0;
  for (let i = 0, j = points.length - 1; i < points.length; j = i, i += 1) {
    area += points[j][0] * points[i][1] - points[i][0] * points[j][1];
  }
  return area / 2;
}

/** Where a polygon's label goes: the centroid of its largest outer ring (projected). */
function labelPoint(rings) {
  let best = null;
  for (const [outer] of rings) {
    const area = Math.abs(ringArea(outer));
    if (!best || area > best.area) best = { outer, area };
  }
  const pts = best.outer;
  let cx = 0;
  let cy = 0;
  let a = 0;
  for (let i = 0, j = pts.length - 1; i < pts.length; j = i, i += 1) {
    const f = pts[j][0] * pts[i][1] - pts[i][0] * pts[j][1];
    cx += (pts[j][0] + pts[i][0]) * f;
    cy += (pts[j][1] + pts[i][1]) * f;
    a += f;
  }
  if (Math.abs(a) < 1e-18) return pts[0];
  return [cx / (3 * a), cy / (3 * a)];
}

function niceDistance(metres) {
  const magnitude = 10 ** Math.floor(Math.log10(metres));
  const step = [5, 2, 1].map((m) => m * magnitude).find((d) => d <= metres);
  return step ?? magnitude;
}

const KIND_NAMES = { zone: 'Zone', sensor: 'Sensor', intersection: 'Intersection' };

function describe(props) {
  const kind = KIND_NAMES[props.kind] ?? props.kind;
  const extra = props.level ?? props.sensor_kind;
  return `${kind}: ${props.name}${extra ? ` (${String(extra).replace('_', ' ')})` : ''}`;
}

/** An <svg> map plus legend items for a GeoJSON FeatureCollection; null when it has nothing. */
export function placesMap(collection) {
  const features = (collection.features ?? []).filter((f) => f && f.geometry && f.properties);
  if (features.length === 0) return null;

  // project everything once, then fit the bounds into the view
  const shapes = features.map((f) => {
    if (f.geometry.type === 'Point') {
      return { feature: f, point: mercator(f.geometry.coordinates) };
    }
    const rings = polygons(f.geometry).map((poly) => poly.map((ring) => ring.map(mercator)));
    return { feature: f, rings };
  });
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  const extend = ([x, y]) => {
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
  };
  for (const s of shapes) {
    if (s.point) extend(s.point);
    else s.rings.forEach((poly) => poly[0]?.forEach(extend));
  }
  if (!Number.isFinite(x0)) return null;
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const scale = Math.min(
    (WIDTH - 2 * PADDING) / Math.max(x1 - x0, MIN_SPAN),
    (HEIGHT - 2 * PADDING) / Math.max(y1 - y0, MIN_SPAN),
  );
  const px = ([x, y]) => [
    Math.round((WIDTH / 2 + (x - cx) * scale) * 10) / 10,
    Math.round((HEIGHT / 2 - (y - cy) * scale) * 10) / 10,
  ];

  const titleId = uniqueId('map-title');
  const places = shapes.filter((s) => s.feature.properties.role !== 'context');
  const root = svg('svg', {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: 'map-svg', role: 'img', 'aria-labelledby': titleId,
  }, svg('title', { id: titleId }, `Map of ${places.map((s) => describe(s.feature.properties)).join('; ')}`));
  root.append(svg('rect', { class: 'map-ground', x: 0, y: 0, width: WIDTH, height: HEIGHT }));

  const areas = svg('g', { class: 'areas' });
  const points = svg('g', { class: 'points' });
  const labels = svg('g', { class: 'labels', 'aria-hidden': 'true' });
  const labelled = places.length <= MAX_LABELS;
  // context first, then places; polygons under points
  const ordered = [...shapes].sort((a, b) => (a.feature.properties.role === 'context' ? -1 : 0) - (b.feature.properties.role === 'context' ? -1 : 0));
  for (const s of ordered) {
    const props = s.feature.properties;
    const common = {
      class: [props.kind, `role-${props.role}`, props.level && `level-${props.level}`],
      'data-kind': props.kind, 'data-id': props.id,
    };
    const tooltip = svg('title', {}, describe(props) + (props.role === 'context' ? ' — context' : ''));
    if (s.point) {
      const [x, y] = px(s.point);
      const marker = props.kind === 'intersection'
        ? svg('rect', { ...common, x: x - 8, y: y - 8, width: 16, height: 16, transform: `rotate(45 ${x} ${y})` }, tooltip)
        : svg('circle', { ...common, cx: x, cy: y, r: 8 }, tooltip);
      points.append(marker);
      if (labelled) {
        const left = x > WIDTH * 0.65; // keep the label inside the map
        labels.append(svg('text', {
          x: left ? x - 14 : x + 14, y, dy: '0.35em', 'text-anchor': left ? 'end' : 'start', class: 'label',
        }, props.name));
      }
    } else {
      const d = s.rings.map((poly) => poly.map((ring) => `M${ring.map((p) => px(p).join(',')).join('L')}Z`).join('')).join('');
      areas.append(svg('path', { ...common, d, 'fill-rule': 'evenodd' }, tooltip));
      if (labelled && props.role !== 'context') {
        const [x, y] = px(labelPoint(s.rings));
        labels.append(svg('text', { x, y, dy: '0.35em', 'text-anchor': 'middle', class: 'label zone-label' }, props.name));
      }
    }
  }
  root.append(areas, points, labels, scaleBar(scale, cy));

  const legend = [...places, ...shapes.filter((s) => s.feature.properties.role === 'context')].map((s) => {
    const props = s.feature.properties;
    const context = props.role === 'context';
    return el('li', { 'data-kind': props.kind, class: context ? 'context' : null },
      el('span', { class: ['key', `key-${props.kind}`, context && 'key-context'], 'aria-hidden': 'true' }),
      context ? `Lies in ${describe(props).replace(/^Zone: /, 'zone ')}` : describe(props));
  });
  return { map: root, legend };
}

/** A scale bar in the lower left: a round distance at the map's latitude. */
function scaleBar(scale, cy) {
  const latitude = 2 * Math.atan(Math.exp(cy)) - Math.PI / 2;
  const metresPerPixel = (EARTH_RADIUS_M * Math.cos(latitude)) / scale;
  const metres = niceDistance(metresPerPixel * WIDTH * 0.2);
  const length = Math.round(metres / metresPerPixel);
  const x = 20;
  const y = HEIGHT - 20;
  const text = metres >= 1000 ? `${metres / 1000} km` : `${metres} m`;
  return svg('g', { class: 'scale-bar', 'aria-hidden': 'true' },
    svg('path', { d: `M${x},${y - 8}V${y}H${x + length}V${y - 8}` }),
    svg('text', { x: x + length + 8, y, dy: '-0.1em' }, text));
}
