// The edgeway console: a small client of the admin service's own JSON API.
// Pages are rendered with plain DOM calls (text is never parsed as HTML), the
// session cookie authenticates, and every change sends the session's CSRF
// token. The API decides what a caller may do; the console only hides what
// the API would refuse.
import { t, lang, setLang, LANGS } from './i18n.js';
import { userPages } from './pages.js';
import { adminPages } from './admin.js';

export const state = { session: null, info: null };

/** Builds an element: h('a', { href, onclick }, 'text', child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An API call; throws an Error with the API's message on a non-2xx answer. */
export async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && state.session?.csrf_token) headers['x-csrf-token'] = state.session.csrf_token;
  const r = await fetch(path, {
    method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 204) return null;
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  if (!r.ok) {
    const err = new Error(json?.error?.message || `${r.status}`);
    err.status = r.status;
    throw err;
  }
  return json ?? text;
}

// ---- formatting ----

/** Micro-units as a decimal amount (1 unit = 1,000,000 micros). */
export function money(micros) {
  const n = Number(micros || 0) / 1e6;
  return n.toLocaleString(lang() === 'zh' ? 'zh-CN' : 'en-US', { minimumFractionDigits: 2, maximumFractionDigits: 6 });
}
/** A price in micros per million tokens, per million tokens. */
export const perMillion = (micros) => (micros === null || micros === undefined ? '—' : money(micros));
export const num = (n) => Number(n || 0).toLocaleString(lang() === 'zh' ? 'zh-CN' : 'en-US');
export const when = (ms) => (ms ? new Date(ms).toLocaleString(lang() === 'zh' ? 'zh-CN' : 'en-US') : '—');
export const whenSecs = (s) => when(s ? s * 1000 : null);
/** Units typed by a person ("1.5") as micros, or undefined when blank. */
export function toMicros(text) {
  const s = String(text ?? '').trim();
  if (!s) return undefined;
  const n = Number(s);
  if (!Number.isFinite(n)) throw new Error(t('err.number', { value: s }));
  return Math.round(n * 1e6);
}
export function intOrUndef(text) {
  const s = String(text ?? '').trim();
  if (!s) return undefined;
  const n = Number.parseInt(s, 10);
  if (!Number.isFinite(n)) throw new Error(t('err.number', { value: s }));
  return n;
}

// ---- UI pieces ----

/** A status line that screen readers announce. */
export function notice() {
  const el = h('p', { class: 'notice', role: 'status', 'aria-live': 'polite' });
  el.ok = (msg) => { el.className = 'notice ok'; el.textContent = msg; };
  el.fail = (err) => { el.className = 'notice error'; el.textContent = err?.message || String(err); };
  el.clear = () => { el.className = 'notice'; el.textContent = ''; };
  return el;
}

/** A labelled input: field('name', t('label'), { type, required, ... }). */
export function field(name, label, attrs = {}) {
  const id = `f-${name}-${Math.random().toString(36).slice(2, 7)}`;
  const input = attrs.options
    ? h('select', { id, name, ...attrs, options: undefined }, attrs.options.map(([v, l]) => h('option', { value: v, selected: v === attrs.value }, l)))
    : h(attrs.multiline ? 'textarea' : 'input', { id, name, ...attrs, multiline: undefined });
  return h('div', { class: 'field' }, h('label', { for: id }, label), input);
}

/** Reads a form's named fields. */
export const formData = (form) => Object.fromEntries(new FormData(form).entries());

/** A table: columns [[header, row => cell]], rows. */
export function table(columns, rows, { empty = t('common.none'), onRow } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, columns.map(([head]) => h('th', { scope: 'col' }, head)))),
    h('tbody', {}, rows.map((row) => {
      const tr = h('tr', {}, columns.map(([, cell]) => h('td', {}, cell(row))));
      if (onRow) {
        tr.tabIndex = 0;
        tr.classList.add('clickable');
        tr.addEventListener('click', () => onRow(row, tr));
        tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onRow(row, tr); } });
      }
      return tr;
    }))));
}

/** Copies text and says so on the button. */
export function copyButton(text, label = t('common.copy')) {
  const b = h('button', { type: 'button', class: 'secondary small' }, label);
  b.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Clipboard API unavailable (plain http): select a hidden textarea.
      const ta = h('textarea', { class: 'offscreen' }, text);
      document.body.append(ta); ta.select(); document.execCommand('copy'); ta.remove();
    }
    b.textContent = t('common.copied');
    setTimeout(() => { b.textContent = label; }, 1500);
  });
  return b;
}

export function section(title, ...children) {
  return h('section', { class: 'card' }, h('h2', {}, title), ...children);
}

// ---- routing ----

const pages = { ...userPages, ...adminPages };

/** The navigation for a role: [route, label key, admin only]. */
const NAV = [
  ['dashboard', 'nav.dashboard', false],
  ['keys', 'nav.keys', false],
  ['logs', 'nav.logs', false],
  ['account', 'nav.account', false],
  ['channels', 'nav.channels', true],
  ['models', 'nav.models', true],
  ['groups', 'nav.groups', true],
  ['users', 'nav.users', true],
  ['codes', 'nav.codes', true],
  ['pricing', 'nav.pricing', false],
];

export const isAdmin = () => ['admin', 'root'].includes(state.session?.user?.role);
export const go = (route) => { location.hash = `#/${route}`; };

function currentRoute() {
  const [name, query] = location.hash.replace(/^#\/?/, '').split('?');
  return { name: name || (state.session ? 'dashboard' : 'login'), params: new URLSearchParams(query || '') };
}

async function loadSession() {
  try {
    const s = await api('GET', '/api/auth/session');
    state.session = s.via === 'session' ? s : null;
  } catch {
    state.session = null;
  }
}

function langSwitch() {
  return h('div', { class: 'lang' }, LANGS.map(([code, label]) => h('button', {
    type: 'button', class: lang() === code ? 'small active' : 'small secondary', lang: code,
    'aria-pressed': String(lang() === code), 'data-lang': code,
    onclick: () => { setLang(code); render(); },
  }, label)));
}

function header(active) {
  const nav = h('nav', { id: 'nav', 'aria-label': t('nav.label') }, h('ul', {},
    NAV.filter(([, , admin]) => !admin || isAdmin())
      .filter(([route]) => state.session || route === 'pricing')
      .map(([route, key]) => h('li', {}, h('a', {
        href: `#/${route}`, 'aria-current': route === active ? 'page' : undefined,
      }, t(key))))));
  const toggle = h('button', { type: 'button', class: 'menu-toggle secondary small', 'aria-expanded': 'false', 'aria-controls': 'nav' }, t('nav.menu'));
  toggle.addEventListener('click', () => {
    const open = nav.classList.toggle('open');
    toggle.setAttribute('aria-expanded', String(open));
  });
  const who = state.session
    ? h('div', { class: 'who' },
      h('span', { class: 'username' }, state.session.user.username, ' · ', t(`role.${state.session.user.role}`)),
      h('button', {
        type: 'button', class: 'small secondary', onclick: async () => {
          try { await api('POST', '/api/auth/logout'); } catch { /* gone already */ }
          state.session = null; go('login'); render();
        },
      }, t('nav.logout')))
    : h('a', { href: '#/login', class: 'button small' }, t('login.submit'));
  return h('header', { class: 'top' },
    h('a', { class: 'brand', href: state.session ? '#/dashboard' : '#/pricing' }, h('img', { src: '/static/favicon.svg', alt: '', width: 24, height: 24 }), 'edgeway'),
    toggle, nav, h('div', { class: 'top-right' }, langSwitch(), who));
}

let renderSeq = 0;

/** Renders the page of the current route. */
export async function render() {
  const seq = ++renderSeq;
  document.documentElement.lang = lang() === 'zh' ? 'zh-CN' : 'en';
  const { name, params } = currentRoute();
  const page = pages[name] || pages.notfound;
  const root = document.getElementById('app');
  // data-page / data-ready say which page is shown and when it has loaded.
  const main = h('main', { id: 'main', tabindex: '-1', 'data-page': name });
  if (page.auth && !state.session) { go('login'); return; }
  if (!page.auth && state.session && (name === 'login' || name === 'signup')) { go('dashboard'); return; }
  root.replaceChildren(header(name), main);
  document.title = `${t(page.title)} · edgeway`;
  if (page.admin && !isAdmin()) {
    main.append(h('h1', {}, t('forbidden.title')), h('p', { class: 'notice error', role: 'alert' }, t('forbidden.text')));
    main.dataset.ready = 'true';
    return;
  }
  try {
    const content = await page.render(params);
    if (seq !== renderSeq) return;
    main.append(...[content].flat());
  } catch (err) {
    if (err.status === 401) { state.session = null; go('login'); return; }
    main.append(h('p', { class: 'notice error', role: 'alert' }, err.message));
  }
  main.dataset.ready = 'true';
  // Move focus to the new page (its first field when it asks for one) for
  // keyboard and screen-reader users.
  if (document.activeElement === document.body || !root.contains(document.activeElement)) {
    (main.querySelector('[autofocus]') || main).focus({ preventScroll: true });
  }
}

/** After a login: the session is the API's answer. */
export async function signedIn(session) {
  state.session = session;
  go('dashboard');
  await render();
}

async function start() {
  [state.info] = await Promise.all([api('GET', '/api/public/info').catch(() => ({})), loadSession()]);
  window.addEventListener('hashchange', render);
  await render();
}

start();
