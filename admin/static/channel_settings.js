// A channel's advanced settings, which the edge honours per channel: the
// stream time limits (first content, idle gap), the circuit breaker's
// policy, more inline keys and how they take turns, the private media hosts
// it may receive, and the built-in mock's delays. In the channel form they
// sit in a collapsed "Advanced settings" group (opened when editing a channel
// that sets any); each channel's row shows them read-only. The server checks
// every value (admin/src/channels.rs); the form only refuses what is not a
// whole number, so the operator hears why before a round trip.
import { t } from './i18n.js';
import { h, field } from './app.js';

/** The edge's defaults (edgeway_core::limits, channel_health::breaker). */
const DEFAULTS = { first_content_timeout_ms: 120000, idle_timeout_ms: 60000, breaker: { failures: 5, window_ms: 30000, open_ms: 15000 } };

/** A whole number typed into the field labelled `label`, or undefined when blank. */
function whole(label, text) {
  const s = String(text ?? '').trim();
  if (!s) return undefined;
  if (!/^\d+$/.test(s) || !Number.isSafeInteger(Number(s))) throw new Error(t('channels.bad_whole', { field: label, value: s }));
  return Number(s);
}

const hostsList = (text) => (text ? text.split(',').map((x) => x.trim()).filter(Boolean) : []);
/** Keys typed one per line (commas and spaces separate them too). */
export const keysList = (text) => (text ? text.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean) : []);

/** The form's group of advanced fields (a collapsed `<details>`). */
export function advancedFields() {
  const mock = h('div', { class: 'grid-form wide', 'data-mock-fields': '' },
    field('mock_latency_ms', t('channels.mock_latency'), { inputmode: 'numeric', placeholder: '0' }),
    field('mock_chunk_delay_ms', t('channels.mock_chunk_delay'), { inputmode: 'numeric', placeholder: '0' }));
  return h('details', { class: 'wide advanced', 'data-advanced': '' },
    h('summary', {}, t('channels.advanced')),
    h('div', { class: 'grid-form' },
      field('first_content_timeout_ms', t('channels.first_content_timeout'), { inputmode: 'numeric', placeholder: String(DEFAULTS.first_content_timeout_ms) }),
      field('idle_timeout_ms', t('channels.idle_timeout'), { inputmode: 'numeric', placeholder: String(DEFAULTS.idle_timeout_ms) }),
      field('breaker_failures', t('channels.breaker_failures'), { inputmode: 'numeric', placeholder: String(DEFAULTS.breaker.failures) }),
      field('breaker_window_ms', t('channels.breaker_window'), { inputmode: 'numeric', placeholder: String(DEFAULTS.breaker.window_ms) }),
      field('breaker_open_ms', t('channels.breaker_open'), { inputmode: 'numeric', placeholder: String(DEFAULTS.breaker.open_ms) }),
      field('key_rotation', t('channels.key_rotation'), { options: [['round_robin', t('channels.rotation_round_robin')], ['random', t('channels.rotation_random')]] }),
      h('div', { class: 'wide' }, field('api_keys', t('channels.more_keys'), { multiline: true, rows: 3, class: 'secret', autocomplete: 'off', spellcheck: 'false', placeholder: 'sk-…' })),
      h('div', { class: 'wide' }, field('media_hosts', t('channels.media_hosts'), { placeholder: 'minio.lan, 10.0.0.9' })),
      mock));
}

/** Shows the mock's fields only for the `mock` provider (the server refuses them for any other). */
export function showProvider(form, provider) {
  const mock = form.querySelector('[data-mock-fields]');
  const isMock = provider === 'mock';
  mock.hidden = !isMock;
  for (const input of mock.querySelectorAll('input')) input.disabled = !isMock;
}

/** Fills the advanced fields from a channel as the API shows it; opens the group when any is set. */
export function fillAdvanced(form, c) {
  const set = (name, value) => { form.querySelector(`[name="${name}"]`).value = value ?? ''; };
  set('first_content_timeout_ms', c.first_content_timeout_ms);
  set('idle_timeout_ms', c.idle_timeout_ms);
  set('breaker_failures', c.breaker?.failures);
  set('breaker_window_ms', c.breaker?.window_ms);
  set('breaker_open_ms', c.breaker?.open_ms);
  set('key_rotation', c.key_rotation || 'round_robin');
  set('api_keys', '');
  form.querySelector('[name="api_keys"]').placeholder = c.credentials > 0 ? t('channels.key_unchanged', { n: c.credentials }) : 'sk-…';
  set('media_hosts', (c.media_hosts || []).join(', '));
  set('mock_latency_ms', c.mock?.latency_ms);
  set('mock_chunk_delay_ms', c.mock?.chunk_delay_ms);
  const details = form.querySelector('[data-advanced]');
  details.open = Boolean(c.first_content_timeout_ms || c.idle_timeout_ms || c.breaker || c.credentials > 1
    || c.key_rotation === 'random' || c.media_hosts?.length || c.mock);
}

/** Resets the group for a new channel. */
export function clearAdvanced(form) {
  form.querySelector('[name="api_keys"]').placeholder = 'sk-…';
  form.querySelector('[data-advanced]').open = false;
}

/**
 * The advanced fields of the form data `f` as a channel body's fields. When
 * `editing`, a blank field is `null` (back to its default); when adding, it
 * is left out. Keys are not read here (they go with `api_key`).
 */
export function readAdvanced(f, { editing }) {
  const blank = editing ? null : undefined;
  const n = (name, label) => whole(t(label), f[name]);
  const body = {
    first_content_timeout_ms: n('first_content_timeout_ms', 'channels.first_content_timeout') ?? blank,
    idle_timeout_ms: n('idle_timeout_ms', 'channels.idle_timeout') ?? blank,
    key_rotation: f.key_rotation || 'round_robin',
    media_hosts: hostsList(f.media_hosts),
  };
  const breaker = {
    failures: n('breaker_failures', 'channels.breaker_failures'),
    window_ms: n('breaker_window_ms', 'channels.breaker_window'),
    open_ms: n('breaker_open_ms', 'channels.breaker_open'),
  };
  // Fields left blank take the default policy's values.
  body.breaker = Object.values(breaker).some((v) => v !== undefined)
    ? Object.fromEntries(Object.entries(breaker).map(([k, v]) => [k, v ?? DEFAULTS.breaker[k]]))
    : blank;
  if ('mock_latency_ms' in f) {
    const latency = n('mock_latency_ms', 'channels.mock_latency');
    const delay = n('mock_chunk_delay_ms', 'channels.mock_chunk_delay');
    body.mock = latency === undefined && delay === undefined ? blank : { latency_ms: latency ?? 0, chunk_delay_ms: delay ?? 0 };
  }
  return body;
}

/** A channel's advanced settings, read-only, for its row in the list. */
export function settingsCell(c) {
  const ms = (v, fallback) => (v ?? null) === null ? t('channels.default_value', { value: fallback }) : `${v} ms`;
  const b = c.breaker ?? DEFAULTS.breaker;
  const breaker = b.failures === 0 ? t('channels.breaker_off')
    : t('channels.breaker_value', { failures: b.failures, window: b.window_ms, open: b.open_ms });
  const rows = [
    ['timeout_ms', t('channels.timeout'), c.timeout_ms ? `${c.timeout_ms} ms` : t('channels.default_value', { value: 'UPSTREAM_TIMEOUT_MS' })],
    ['first_content_timeout_ms', t('channels.first_content_timeout'), ms(c.first_content_timeout_ms, DEFAULTS.first_content_timeout_ms)],
    ['idle_timeout_ms', t('channels.idle_timeout'), ms(c.idle_timeout_ms, DEFAULTS.idle_timeout_ms)],
    ['breaker', t('channels.breaker'), c.breaker ? breaker : `${breaker} (${t('channels.default')})`],
    ['keys', t('channels.keys'), t('channels.keys_value', {
      n: c.credentials, rotation: t(c.key_rotation === 'random' ? 'channels.rotation_random' : 'channels.rotation_round_robin'),
    })],
    ['media_hosts', t('channels.media_hosts_short'), (c.media_hosts || []).join(', ') || '—'],
  ];
  if (c.provider === 'mock') {
    rows.push(['mock', t('channels.mock_delays'), t('channels.mock_value', { latency: c.mock?.latency_ms ?? 0, delay: c.mock?.chunk_delay_ms ?? 0 })]);
  }
  return h('details', { class: 'settings', 'data-settings': c.id },
    h('summary', { 'aria-label': `${t('channels.settings')} ${c.id}` }, t('channels.show_settings')),
    h('dl', {}, rows.flatMap(([key, label, value]) => [h('dt', {}, label), h('dd', { 'data-setting': key }, value)])));
}
