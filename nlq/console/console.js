// The CityOS operator console: ask in plain language, read the answer, its SQL, rows, chart and
// map; approve or reject proposed control actions (a signal change with the twin's predicted
// effect beside it, whatif.js). Talks only to this service's /api/v1 (the contract in
// shared/contracts/nlq-api.md) with the operator's Bearer token, which stays in this tab's
// sessionStorage. Every piece of data is put into the page as text, never as markup.

import { timeSeriesChart } from './chart.js';
import { el, formatValue } from './dom.js';
import { placesMap } from './map.js';
import { whatIfView } from './whatif.js';

const API = '/api/v1';
const TOKEN_KEY = 'cityos.console.token';
const MAX_TABLE_ROWS = 500;
const MAX_HISTORY = 30;
const WHAT_IF_POLL_MS = 2000; // while a proposed signal change waits for its simulation
const WHAT_IF_WAIT_MS = 120_000;
const CONTROLLER_POLL_MS = 500; // while an approved change waits for the controller to confirm
const CONTROLLER_WAIT_MS = 60_000;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- talking to the service

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const STATUS_TEXT = {
  400: 'The service could not use that request',
  401: 'The token was not accepted: enter a valid API token',
  403: 'Your token’s role does not allow this',
  404: 'Not found',
  409: 'That is no longer possible',
  422: 'The request was not valid',
  429: 'Too many requests: wait a moment and try again',
  503: 'The service is not ready',
};

function detailText(detail) {
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => (d && typeof d.msg === 'string' ? d.msg : JSON.stringify(d))).join('; ');
  }
  return detail ? JSON.stringify(detail) : '';
}

function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) ?? '';
}

async function api(method, path, body) {
  const token = getToken();
  if (!token) throw new ApiError(401, 'Enter an API token first (cityos token create --role … --name …)');
  const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(API + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, 'The service cannot be reached');
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const base = STATUS_TEXT[response.status] ?? `The service answered ${response.status}`;
    const detail = detailText(data?.detail ?? data?.reason ?? '');
    throw new ApiError(response.status, detail && detail !== base ? `${base}: ${detail}` : base);
  }
  return data;
}

// ---------------------------------------------------------------- token

function showTokenState() {
  const state = $('token-state');
  if (getToken()) {
    state.textContent = 'Token set for this tab';
    state.className = 'token-state ok';
  } else {
    state.textContent = 'No token yet';
    state.className = 'token-state warn';
  }
}

function setupToken() {
  $('token').value = getToken();
  showTokenState();
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = $('token').value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
    loadHistory();
    $('question').focus();
  });
  $('token-forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $('token').value = '';
    showTokenState();
    $('history').replaceChildren();
    $('history-status').textContent = '';
    $('pending').replaceChildren();
    $('pending-status').textContent = '';
    $('token').focus();
  });
}

function tokenRejected(error) {
  if (error.status === 401) {
    showTokenState();
    $('token').focus();
  }
}

// ---------------------------------------------------------------- asking

/** '2016-12-19T07:55' (UTC assumed), '2016-12-19', or any ISO-8601 instant -> ISO UTC, or null. */
function normaliseAsOf(text) {
  let value = text.trim();
  if (!value) return null;
  if (/^\d{4}-\d{2}-\d{2}$/.test(value)) value += 'T00:00:00';
  value = value.replace(' ', 'T');
  if (!/(Z|[+-]\d{2}:?\d{2})$/i.test(value)) value += 'Z';
  const ms = Date.parse(value);
  if (Number.isNaN(ms)) throw new Error('“As of” is not a date and time: use e.g. 2016-12-19T07:55:00Z');
  return new Date(ms).toISOString().replace('.000Z', 'Z');
}

function setStatus(text, tone = '') {
  const status = $('ask-status');
  status.textContent = text;
  status.className = `ask-status ${tone}`;
}

let asking = false;

async function ask(question, asOfText) {
  if (asking) return;
  const text = question.trim();
  if (!text) {
    setStatus('Type a question first.', 'error');
    $('question').focus();
    return;
  }
  let asOf;
  try {
    asOf = normaliseAsOf(asOfText);
    $('as-of').removeAttribute('aria-invalid');
  } catch (error) {
    $('as-of').setAttribute('aria-invalid', 'true');
    setStatus(error.message, 'error');
    $('as-of').focus();
    return;
  }
  asking = true;
  $('ask-button').disabled = true;
  $('reply').setAttribute('aria-busy', 'true');
  setStatus('Asking…', 'busy');
  try {
    const reply = await api('POST', '/ask', asOf ? { question: text, as_of: asOf } : { question: text });
    setStatus('');
    renderReply(reply, text, asOf);
    loadHistory();
  } catch (error) {
    setStatus(error.message, 'error');
    tokenRejected(error);
  } finally {
    asking = false;
    $('ask-button').disabled = false;
    $('reply').setAttribute('aria-busy', 'false');
  }
}

/** Put a question (and as_of) in the form and ask it: history items, clarification options. */
function askAgain(question, asOf) {
  $('question').value = question;
  if (asOf !== undefined) $('as-of').value = asOf ?? '';
  ask(question, $('as-of').value);
}

function setupAsk() {
  const form = $('ask-form');
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    ask($('question').value, $('as-of').value);
  });
  $('question').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}

// ---------------------------------------------------------------- replies

const KIND_TITLES = {
  answer: 'Answer',
  clarification: 'Which did you mean?',
  refusal: 'Not answered',
  action: 'Proposed action',
};

function renderReply(reply, question, asOf) {
  const kind = reply?.kind;
  $('reply').dataset.kind = kind ?? 'unknown';
  $('reply-question').textContent = `${KIND_TITLES[kind] ?? 'Reply'} · “${question}”${asOf ? ` as of ${formatValue(asOf)}` : ''}`;
  const answer = $('answer');
  answer.textContent = reply?.answer ?? '';
  answer.className = `answer kind-${kind}`;
  $('interpretation').textContent = reply?.interpretation ? `Read as: ${reply.interpretation}` : '';
  const body = $('reply-body');
  body.replaceChildren();
  hideMap();

  if (kind === 'answer') {
    renderAnswer(body, reply);
  } else if (kind === 'clarification') {
    renderClarification(body, reply, asOf);
  } else if (kind === 'refusal') {
    body.append(el('div', { class: 'refusal', role: 'note' },
      el('strong', {}, 'Reason: '), el('span', { class: 'refusal-reason' }, reply.reason ?? 'none given')));
  } else if (kind === 'action') {
    renderAction(body, reply.action ?? {});
    loadPending();
  } else {
    body.append(el('p', { class: 'error' }, 'The service sent a reply this console does not know.'));
  }
}

function renderAnswer(body, reply) {
  const columns = Array.isArray(reply.columns) ? reply.columns : [];
  const rows = Array.isArray(reply.rows) ? reply.rows : [];
  if (reply.shape === 'time_series') {
    const chart = timeSeriesChart(columns, rows);
    if (chart) body.append(chart);
  }
  if (reply.shape === 'scalar' && rows.length === 1 && rows[0].length === 1) {
    body.append(el('p', { class: 'scalar', 'aria-label': `${columns[0] ?? 'value'}: ${formatValue(rows[0][0])}` },
      el('span', { class: 'scalar-value' }, formatValue(rows[0][0])),
      el('span', { class: 'scalar-name' }, columns[0] ?? '')));
  }
  body.append(rowsTable(columns, rows));
  body.append(el('details', { class: 'sql' },
    el('summary', {}, 'SQL that was run'),
    el('pre', {}, el('code', {}, reply.sql ?? ''))));
  showPlaces(reply.places ?? []);
}

function rowsTable(columns, rows) {
  const shown = rows.slice(0, MAX_TABLE_ROWS);
  const caption = rows.length === 0 ? 'No rows'
    : rows.length > shown.length ? `First ${shown.length} of ${rows.length} rows`
      : `${rows.length} row${rows.length === 1 ? '' : 's'}`;
  const numeric = columns.map((_, i) => shown.some((r) => typeof r[i] === 'number'));
  return el('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Result rows' },
    el('table', { class: 'rows' },
      el('caption', {}, caption),
      el('thead', {}, el('tr', {}, columns.map((c, i) => el('th', { scope: 'col', class: numeric[i] ? 'num' : null }, c)))),
      el('tbody', {}, shown.map((row) => el('tr', {},
        columns.map((_, i) => el('td', { class: numeric[i] ? 'num' : null }, formatValue(row[i]))))))));
}

function renderClarification(body, reply, asOf) {
  const options = Array.isArray(reply.options) ? reply.options : [];
  const list = el('ul', { class: 'options', 'aria-label': 'Choose one' },
    options.map((option) => el('li', {}, el('button', {
      type: 'button', class: 'option',
      onclick: () => askAgain(String(option), asOf),
    }, String(option)))));
  body.append(list);
  list.querySelector('button')?.focus();
}

// ---------------------------------------------------------------- actions

const TARGET_LABELS = { intersection_id: 'Intersection', alert_id: 'Alert', zone_id: 'Zone' };
const PARAM_LABELS = {
  phase_index: 'Phase',
  green_s: 'New green time',
  operation: 'Operation',
  severity: 'Severity',
  message: 'Message',
};
const ACTION_TITLES = { signal_timing: 'Signal timing change', alert: 'Alert operation' };
// statuses after which this card takes no more decisions ('sent': the controller has it)
const FINAL_STATUSES = new Set([
  'approved', 'sent', 'rejected', 'applied', 'failed', 'rolled_back', 'expired', 'superseded',
]);

function paramText(name, value) {
  if (name === 'green_s' && typeof value === 'number') return `${formatValue(value)} s`;
  return formatValue(value);
}

function renderAction(body, action) {
  const status = el('span', { class: ['status-badge', `status-${action.status}`] }, action.status ?? 'unknown');
  const facts = el('dl', { class: 'facts' });
  const fact = (label, value) => {
    const dd = el('dd', {}, value);
    facts.append(el('dt', {}, label), dd);
    return dd;
  };
  fact('Action', ACTION_TITLES[action.kind] ?? String(action.kind ?? ''));
  const targetCells = {};
  for (const [key, value] of Object.entries(action.target ?? {})) {
    targetCells[key] = fact(TARGET_LABELS[key] ?? key, formatValue(value));
  }
  for (const [key, value] of Object.entries(action.params ?? {})) fact(PARAM_LABELS[key] ?? key, paramText(key, value));
  fact('Status', status);
  if (action.action_id) fact('Action id', action.action_id);

  const card = el('article', {
    class: ['proposal', `status-${action.status}`], 'aria-label': 'Proposed action', 'data-action-id': action.action_id,
  },
    el('h3', {}, action.status === 'rejected' ? 'Rejected before proposal' : 'What would change'),
    action.reason ? el('p', { class: 'change' }, action.reason) : null,
    facts);
  if (action.kind === 'signal_timing' && action.status !== 'rejected') {
    card.append(whatIfSection(action));
  }

  if (action.status === 'proposed' && action.action_id) {
    card.append(...decisionControls(action.action_id, (newStatus) => {
      status.textContent = newStatus;
      status.className = `status-badge status-${newStatus}`;
      card.className = `proposal status-${newStatus}`;
    }));
  }
  body.append(card);

  const places = [];
  if (action.target?.intersection_id) places.push({ kind: 'intersection', id: action.target.intersection_id });
  if (action.target?.zone_id) places.push({ kind: 'zone', id: action.target.zone_id });
  showPlaces(places).then((collection) => {
    // name the target where the map data knows it: "Neusser Str. / Wilhelmstr. (32319828)"
    for (const feature of collection?.features ?? []) {
      const { kind, id, name, role } = feature.properties ?? {};
      const cell = targetCells[`${kind}_id`];
      if (cell && role === 'place' && id === action.target[`${kind}_id`] && name) cell.textContent = `${name} (${id})`;
    }
  });
}

/** Approve / Reject buttons for one action and a line saying how it went; calls onStatus. */
function decisionControls(actionId, onStatus) {
  const outcome = el('p', { class: 'action-outcome', role: 'status', 'aria-live': 'polite' });
  const approve = el('button', { type: 'button', class: 'approve' }, 'Approve');
  const reject = el('button', { type: 'button', class: 'reject' }, 'Reject');
  const decide = async (verb) => {
    approve.disabled = true;
    reject.disabled = true;
    outcome.className = 'action-outcome busy';
    outcome.textContent = verb === 'approve' ? 'Approving…' : 'Rejecting…';
    try {
      const result = await api('POST', `/actions/${encodeURIComponent(actionId)}/${verb}`);
      const newStatus = result?.status ?? (verb === 'approve' ? 'approved' : 'rejected');
      outcome.className = 'action-outcome ok';
      outcome.textContent = `Status: ${newStatus}${result?.note ? ` — ${result.note}` : ''}`;
      onStatus(newStatus);
      if (!FINAL_STATUSES.has(newStatus)) {
        approve.disabled = false;
        reject.disabled = false;
      }
      if (newStatus === 'sent') followToController(actionId, outcome, onStatus);
    } catch (error) {
      outcome.className = 'action-outcome error';
      outcome.textContent = error.message;
      approve.disabled = false;
      reject.disabled = false;
      tokenRejected(error);
    }
  };
  approve.addEventListener('click', () => decide('approve'));
  reject.addEventListener('click', () => decide('reject'));
  return [el('div', { class: 'decision' }, approve, reject), outcome];
}

/** A change handed to the controller: poll until it confirms (applied) or fails. */
function followToController(actionId, outcome, onStatus) {
  const deadline = Date.now() + CONTROLLER_WAIT_MS;
  const poll = async () => {
    if (!outcome.isConnected) return; // a newer reply replaced the card
    try {
      const action = await api('GET', `/actions/${encodeURIComponent(actionId)}`);
      if (action?.status && action.status !== 'sent') {
        outcome.className = action.status === 'applied' ? 'action-outcome ok' : 'action-outcome error';
        outcome.textContent = `Status: ${action.status}${action.note ? ` — ${action.note}` : ''}`;
        onStatus(action.status);
        return;
      }
    } catch (error) {
      if ([401, 403, 404].includes(error.status)) {
        outcome.className = 'action-outcome error';
        outcome.textContent = error.message;
        return;
      }
    }
    if (Date.now() >= deadline) {
      outcome.className = 'action-outcome error';
      outcome.textContent = 'Sent to the controller, which has not confirmed it yet.';
      return;
    }
    setTimeout(poll, CONTROLLER_POLL_MS);
  };
  outcome.textContent = 'Status: sent — waiting for the controller to confirm…';
  setTimeout(poll, CONTROLLER_POLL_MS);
}

/** The twin's predicted effect: shown when the action has it, else fetched until it arrives. */
function whatIfSection(action) {
  const state = el('p', { class: 'what-if-state', role: 'status' });
  const content = el('div', { class: 'what-if-content' });
  const section = el('section', { class: 'what-if-section', 'data-state': 'waiting', 'aria-live': 'polite' },
    el('h4', {}, 'Predicted effect (simulated on the twin)'), state, content);
  const show = (whatIf) => {
    section.dataset.state = typeof whatIf?.error === 'string' ? 'error' : 'ready';
    state.textContent = '';
    content.replaceChildren(...whatIfView(whatIf));
  };
  const stop = (text, tone) => {
    section.dataset.state = tone;
    state.textContent = text;
  };
  if (action.what_if && typeof action.what_if === 'object') {
    show(action.what_if);
  } else if (action.status === 'proposed' && action.action_id) {
    state.textContent = 'Simulating the current and the changed plan on the twin…';
    pollWhatIf(section, action.action_id, show, stop);
  } else {
    stop('No prediction was made for this change.', 'none');
  }
  return section;
}

function pollWhatIf(section, actionId, show, stop) {
  const deadline = Date.now() + WHAT_IF_WAIT_MS;
  const poll = async () => {
    if (!section.isConnected) return; // a newer reply replaced the card
    try {
      const action = await api('GET', `/actions/${encodeURIComponent(actionId)}`);
      if (action?.what_if && typeof action.what_if === 'object') {
        show(action.what_if);
        return;
      }
    } catch (error) {
      if ([401, 403, 404].includes(error.status)) {
        stop(`No prediction: ${error.message}`, 'error');
        return;
      }
    }
    if (Date.now() >= deadline) {
      stop('No prediction yet: the simulation did not finish within 2 minutes.', 'timeout');
      return;
    }
    setTimeout(poll, WHAT_IF_POLL_MS);
  };
  setTimeout(poll, WHAT_IF_POLL_MS);
}

// ---------------------------------------------------------------- pending actions

/** Proposals awaiting a decision, for the operator who did not propose them (four eyes). */
async function loadPending() {
  const status = $('pending-status');
  if (!getToken()) {
    status.textContent = 'Enter an operator token to see proposals.';
    return;
  }
  status.textContent = 'Loading…';
  try {
    const data = await api('GET', '/actions?status=proposed');
    const actions = Array.isArray(data?.actions) ? data.actions : [];
    status.textContent = actions.length ? '' : 'Nothing awaits approval.';
    $('pending').replaceChildren(...actions.map((action) => {
      const meta = [
        action.proposed_by ? `proposed by ${action.proposed_by}` : null,
        action.expires_at ? `expires ${formatValue(action.expires_at)}` : null,
        action.action_id,
      ].filter(Boolean).join(' · ');
      const item = el('li', { class: 'pending-item', 'data-action-id': action.action_id },
        el('p', { class: 'pending-reason' }, action.reason ?? action.summary ?? action.kind ?? ''),
        typeof action.what_if?.summary === 'string' ? el('p', { class: 'pending-what-if' }, `Predicted: ${action.what_if.summary}`) : null,
        el('span', { class: 'history-meta' }, meta));
      item.append(...decisionControls(action.action_id, (newStatus) => item.classList.add(`status-${newStatus}`)));
      return item;
    }));
  } catch (error) {
    status.textContent = error.message;
    $('pending').replaceChildren();
  }
}

// ---------------------------------------------------------------- map

const PLACE_PARAMS = {
  zone: 'zone_id', sensor: 'sensor_id', intersection: 'intersection_id', city: 'city_id', street: 'street',
};

let mapRequest = 0;

function hideMap() {
  mapRequest += 1;
  $('map-panel').hidden = true;
  $('map').replaceChildren();
  $('map-legend').replaceChildren();
  $('map-status').textContent = '';
}

/** Draw the places on the map; resolves to their GeoJSON, or null (never rejects). */
async function showPlaces(places) {
  const params = new URLSearchParams();
  for (const place of places) {
    const name = PLACE_PARAMS[place?.kind];
    if (name && place.id) params.append(name, String(place.id));
  }
  if ([...params.keys()].length === 0) return null;
  const request = ++mapRequest;
  try {
    const collection = await api('GET', `/geo?${params}`);
    if (request !== mapRequest) return null; // a newer reply replaced this one
    const drawn = placesMap(collection);
    if (!drawn) return collection;
    $('map').replaceChildren(drawn.map);
    $('map-legend').replaceChildren(...drawn.legend);
    $('map-panel').hidden = false;
    return collection;
  } catch (error) {
    if (request !== mapRequest) return null;
    $('map-panel').hidden = false;
    $('map-status').textContent = `No map: ${error.message}`;
    return null;
  }
}

// ---------------------------------------------------------------- history

function historyItems(data) {
  if (Array.isArray(data)) return data;
  for (const key of ['items', 'history', 'questions']) if (Array.isArray(data?.[key])) return data[key];
  return [];
}

async function loadHistory() {
  const status = $('history-status');
  if (!getToken()) {
    status.textContent = 'Enter a token to see your questions.';
    return;
  }
  try {
    const items = historyItems(await api('GET', '/history')).slice(0, MAX_HISTORY);
    status.textContent = items.length ? '' : 'No questions yet.';
    $('history').replaceChildren(...items.map((item) => {
      const question = String(item.question ?? '');
      const asOf = item.as_of ?? null;
      const when = item.asked_at ?? item.created_at ?? item.at ?? null;
      const meta = [item.kind, when ? `asked ${formatValue(when)}` : null, asOf ? `as of ${formatValue(asOf)}` : null]
        .filter(Boolean).join(' · ');
      return el('li', {},
        el('button', {
          type: 'button', class: 'history-item', title: 'Ask this again',
          onclick: () => askAgain(question, asOf ?? ''),
        }, question),
        meta ? el('span', { class: 'history-meta' }, meta) : null);
    }));
  } catch (error) {
    status.textContent = error.message;
  }
}

// ---------------------------------------------------------------- start

setupToken();
setupAsk();
$('history-refresh').addEventListener('click', () => loadHistory());
$('pending-refresh').addEventListener('click', () => loadPending());
loadHistory();
(getToken() ? $('question') : $('token')).focus();
