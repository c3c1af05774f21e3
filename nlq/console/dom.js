// Building DOM and SVG nodes. Data only ever becomes text nodes or attribute values: nothing
// here (or anywhere in the console) parses a string as markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') node.setAttribute('class', Array.isArray(value) ? value.filter(Boolean).join(' ') : value);
    else if (name.startsWith('on') && typeof value === 'function') node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: el('p', {class: 'x'}, 'text', otherNode). */
export function el(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same calling convention as el(). */
export function svg(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

let uniqueCounter = 0;
/** An id unique in this page, for aria-labelledby and friends. */
export function uniqueId(prefix) {
  uniqueCounter += 1;
  return `${prefix}-${uniqueCounter}`;
}

const ISO_UTC = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(:\d{2})?(\.\d+)?(Z|[+-]00:?00)$/;

/** A cell value for people: numbers rounded sensibly, UTC timestamps spelled out, null as a dash. */
export function formatValue(value) {
  if (value === null || value === undefined) return '—';
  if (typeof value === 'number') return formatNumber(value);
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  const text = String(value);
  const iso = ISO_UTC.exec(text);
  if (iso) return `${iso[1]} ${iso[2]}${iso[3] && iso[3] !== ':00' ? iso[3] : ''} UTC`;
  return text;
}

export function formatNumber(value) {
  if (!Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return value.toLocaleString('en');
  const magnitude = Math.abs(value);
  if (magnitude < 1) return value.toLocaleString('en', { maximumSignificantDigits: 3 });
  return value.toLocaleString('en', { maximumFractionDigits: magnitude >= 100 ? 1 : 2 });
}
