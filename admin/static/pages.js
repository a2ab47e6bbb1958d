// Pages every signed-in user has (dashboard, keys, logs, my account), the
// sign-in and sign-up pages, and the public pricing page.
import { t } from './i18n.js';
import {
  h, api, state, money, perMillion, num, when, whenSecs, toMicros, intOrUndef, notice, field, formData, table,
  copyButton, section, isAdmin, signedIn,
} from './app.js';

// ---- sign in, sign up ----

function loginPage() {
  const info = state.info || {};
  const status = notice();
  const form = h('form', { class: 'stack', 'aria-labelledby': 'login-title' },
    field('username', t('login.username'), { autocomplete: 'username', required: true, autofocus: true }),
    field('password', t('login.password'), { type: 'password', autocomplete: 'current-password', required: true }),
    h('button', { type: 'submit' }, t('login.submit')), status);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    status.clear();
    try {
      const s = await api('POST', '/api/auth/login', formData(form));
      await signedIn({ ...s, via: 'session' });
    } catch (err) {
      status.fail(err.status === 401 ? new Error(t('login.failed')) : err);
    }
  });
  const providers = (info.login_providers || []).map((p) => h('a', { class: 'button secondary oidc', href: p.start_url }, t('login.with', { name: p.name })));
  return h('div', { class: 'narrow' },
    h('h1', { id: 'login-title' }, t('login.title')), form,
    providers.length ? h('div', { class: 'stack oidc-list' }, h('p', { class: 'muted' }, t('login.or')), providers) : null,
    info.signup_mode && info.signup_mode !== 'closed' ? h('p', {}, h('a', { href: '#/signup' }, t('login.signup_link'))) : null,
    h('p', {}, h('a', { href: '#/pricing' }, t('nav.pricing'))));
}

function signupPage() {
  const info = state.info || {};
  if (info.signup_mode === 'closed' || !info.signup_mode) {
    return h('div', { class: 'narrow' }, h('h1', {}, t('signup.title')), h('p', { class: 'notice' }, t('signup.closed')));
  }
  const status = notice();
  const form = h('form', { class: 'stack' },
    field('username', t('login.username'), { autocomplete: 'username', required: true, minlength: 3, maxlength: 32 }),
    field('email', t('signup.email'), { type: 'email', autocomplete: 'email' }),
    field('password', t('login.password'), { type: 'password', autocomplete: 'new-password', required: true, minlength: 8 }),
    info.signup_mode === 'invite' ? field('invite_code', t('signup.invite_code'), { required: true }) : null,
    h('button', { type: 'submit' }, t('signup.submit')), status);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = formData(form);
    if (!body.email) delete body.email;
    try {
      const s = await api('POST', '/api/auth/signup', body);
      await signedIn({ ...s, via: 'session' });
    } catch (err) { status.fail(err); }
  });
  return h('div', { class: 'narrow' }, h('h1', {}, t('signup.title')), form, h('p', {}, h('a', { href: '#/login' }, t('signup.have_account'))));
}

// ---- public pricing ----

export function priceColumns() {
  return [
    [t('models.name'), (m) => h('code', {}, m.name)],
    [t('price.input'), (m) => perMillion(m.price.input)],
    [t('price.output'), (m) => perMillion(m.price.output)],
    [t('price.cache_read'), (m) => perMillion(m.price.cache_read ?? m.price.input)],
    [t('price.cache_write'), (m) => perMillion(m.price.cache_write_5m ?? m.price.input)],
    [t('price.per_request'), (m) => (m.price.per_request ? money(m.price.per_request) : '—')],
  ];
}

async function pricingPage() {
  const p = await api('GET', '/api/public/pricing');
  return [
    h('h1', {}, t('pricing.title')),
    h('p', { class: 'muted' }, t('pricing.lead')),
    section(t('pricing.models'), table([...priceColumns(), [t('models.owned_by'), (m) => m.owned_by || '—']], p.data, { empty: t('pricing.empty') })),
    p.groups.length ? section(t('pricing.groups'), table([
      [t('groups.name'), (g) => g.name], [t('groups.ratio'), (g) => `×${(g.price_ratio_ppm / 1e6).toFixed(2)}`],
    ], p.groups)) : null,
  ];
}

// ---- dashboard ----

const DAY = 86_400_000;

function isoDate(ms) { return new Date(ms).toISOString().slice(0, 10); }

/** Every bucket of the range, zeros where no request fell (so lines are honest). */
export function dense(stats) {
  const byT = new Map(stats.series.map((p) => [p.t_ms, p]));
  const out = [];
  const first = Math.floor(stats.from_ms / stats.bucket_ms) * stats.bucket_ms;
  for (let tms = first; tms < stats.to_ms; tms += stats.bucket_ms) {
    out.push(byT.get(tms) || { t_ms: tms, requests: 0, tokens: 0, cost_micros: 0, errors: 0 });
  }
  return out;
}

function chart(title, series, points, pick, format = num) {
  const box = h('figure', { class: 'chart' }, h('figcaption', {}, title));
  const plot = h('div', { class: 'plot' });
  box.append(plot);
  const xs = points.map((p) => p.t_ms / 1000);
  if (window.uPlot && xs.length) {
    const data = [xs, ...series.map((_, i) => points.map((p) => pick(p)[i]))];
    requestAnimationFrame(() => {
      const opts = {
        width: Math.max(240, plot.clientWidth), height: 200, legend: { show: false },
        scales: { x: { time: true } },
        series: [{}, ...series.map(([label, color]) => ({ label, stroke: color, width: 2, fill: `${color}22`, points: { show: xs.length < 60 } }))],
        axes: [{}, { size: 70, values: (u, vals) => vals.map((v) => format(v)) }],
      };
      new window.uPlot(opts, data, plot);
    });
    box.append(h('p', { class: 'legend' }, series.map(([label, color]) => h('span', {}, h('i', { class: 'swatch', 'data-color': color }), label))));
  } else if (!xs.length) {
    box.append(h('p', { class: 'empty' }, t('dash.no_data')));
  }
  // The same numbers as a table, for screen readers and without charts.
  box.append(h('details', {}, h('summary', {}, t('dash.as_table')), table(
    [[t('dash.time'), (p) => when(p.t_ms)], ...series.map(([label], i) => [label, (p) => format(pick(p)[i])])],
    points.filter((p) => p.requests))));
  return box;
}

async function dashboardPage(params) {
  const admin = isAdmin();
  const now = Date.now();
  const fromDay = params.get('from') || isoDate(now - 6 * DAY);
  const toDay = params.get('to') || isoDate(now);
  const from = Date.parse(`${fromDay}T00:00:00Z`);
  const to = Date.parse(`${toDay}T00:00:00Z`) + DAY;
  const bucket = to - from <= 2 * DAY ? 'hour' : 'day';
  const s = await api('GET', `${admin ? '/api/stats' : '/api/me/stats'}?from_ms=${from}&to_ms=${to}&bucket=${bucket}`);
  const range = h('form', { class: 'row range', 'aria-label': t('dash.range') },
    field('from', t('dash.from'), { type: 'date', value: fromDay, required: true }),
    field('to', t('dash.to'), { type: 'date', value: toDay, required: true }),
    h('button', { type: 'submit' }, t('dash.apply')),
    ...[[1, 'dash.today'], [7, 'dash.week'], [30, 'dash.month']].map(([days, key]) => h('button', {
      type: 'button', class: 'secondary', onclick: () => { location.hash = `#/dashboard?from=${isoDate(now - (days - 1) * DAY)}&to=${isoDate(now)}`; },
    }, t(key))));
  range.addEventListener('submit', (e) => {
    e.preventDefault();
    const f = formData(range);
    location.hash = `#/dashboard?from=${f.from}&to=${f.to}`;
  });
  const tot = s.totals;
  const rate = tot.requests ? ((100 * tot.errors) / tot.requests).toFixed(1) : '0.0';
  const cards = h('div', { class: 'cards' },
    [['dash.requests', num(tot.requests)], ['dash.tokens', num(tot.tokens)], ['dash.spend', money(tot.cost_micros)], ['dash.error_rate', `${rate}%`]]
      .map(([k, v]) => h('div', { class: 'stat', 'data-stat': k.split('.')[1] }, h('span', { class: 'stat-label' }, t(k)), h('strong', {}, v))));
  const points = dense(s);
  const charts = h('div', { class: 'charts' },
    chart(t('dash.requests_errors'), [[t('dash.requests'), '#2563eb'], [t('dash.errors'), '#dc2626']], points, (p) => [p.requests, p.errors]),
    chart(t('dash.tokens'), [[t('dash.tokens'), '#059669']], points, (p) => [p.tokens]),
    chart(t('dash.spend'), [[t('dash.spend'), '#d97706']], points, (p) => [p.cost_micros], money));
  const breakdowns = Object.entries(s.by).map(([dim, groups]) => section(t(`dash.by_${dim}`), table([
    [t(`dash.dim_${dim}`), (g) => g.name || '—'], [t('dash.requests'), (g) => num(g.requests)], [t('dash.tokens'), (g) => num(g.tokens)],
    [t('dash.spend'), (g) => money(g.cost_micros)], [t('dash.errors'), (g) => num(g.errors)],
  ], groups)));
  return [h('h1', {}, t('nav.dashboard')), range, cards, charts, h('div', { class: 'grid2' }, breakdowns)];
}

// ---- keys ----

/** Ready-to-paste snippets for a new key. */
export function snippets(key, gateway) {
  const base = gateway || location.origin.replace(/:\d+$/, ':8787');
  return [
    ['OpenAI (Python)', `from openai import OpenAI\n\nclient = OpenAI(base_url="${base}/v1", api_key="${key}")\nreply = client.chat.completions.create(\n    model="gpt-4o-mini",\n    messages=[{"role": "user", "content": "Hello"}],\n)\nprint(reply.choices[0].message.content)`],
    ['OpenAI (Node)', `import OpenAI from 'openai';\n\nconst client = new OpenAI({ baseURL: '${base}/v1', apiKey: '${key}' });\nconst reply = await client.chat.completions.create({\n  model: 'gpt-4o-mini',\n  messages: [{ role: 'user', content: 'Hello' }],\n});\nconsole.log(reply.choices[0].message.content);`],
    ['Anthropic (Python)', `import anthropic\n\nclient = anthropic.Anthropic(base_url="${base}", api_key="${key}")\nmessage = client.messages.create(\n    model="claude-sonnet-4-5", max_tokens=256,\n    messages=[{"role": "user", "content": "Hello"}],\n)\nprint(message.content[0].text)`],
    ['Gemini (Python)', `from google import genai\n\nclient = genai.Client(api_key="${key}", http_options={"base_url": "${base}"})\nreply = client.models.generate_content(model="gemini-2.5-flash", contents="Hello")\nprint(reply.text)`],
    ['curl', `curl ${base}/v1/chat/completions \\\n  -H "Authorization: Bearer ${key}" -H "Content-Type: application/json" \\\n  -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'`],
  ];
}

function newKeyPanel(created) {
  const key = created.key;
  return h('section', { class: 'card new-key', role: 'alert', 'aria-labelledby': 'new-key-title' },
    h('h2', { id: 'new-key-title' }, t('keys.created')),
    h('p', { class: 'notice warn' }, t('keys.once')),
    h('div', { class: 'row' }, h('code', { class: 'secret', 'data-testid': 'new-key' }, key), copyButton(key)),
    h('h3', {}, t('keys.snippets')),
    snippets(key, state.info?.gateway_url).map(([name, code]) => h('details', { class: 'snippet' },
      h('summary', {}, name), h('div', { class: 'row' }, copyButton(code)), h('pre', {}, h('code', {}, code)))));
}

async function keysPage() {
  const admin = isAdmin();
  const [keys, models] = await Promise.all([
    api('GET', admin ? '/api/keys' : '/api/me/keys'),
    admin ? api('GET', '/api/models').then((m) => m.data.map((x) => x.name)) : api('GET', '/api/me/models').then((m) => m.data.map((x) => x.name)),
  ]);
  const status = notice();
  const created = h('div');
  const form = h('form', { class: 'grid-form', 'aria-label': t('keys.create') },
    field('name', t('keys.name'), { required: true, maxlength: 100 }),
    field('quota', t('keys.quota'), { inputmode: 'decimal', placeholder: t('keys.unlimited') }),
    field('rpm', t('keys.rpm'), { inputmode: 'numeric', placeholder: t('keys.unlimited') }),
    field('tpm', t('keys.tpm'), { inputmode: 'numeric', placeholder: t('keys.unlimited') }),
    field('models', t('keys.models'), { placeholder: models.slice(0, 3).join(', ') || t('keys.all_models') }),
    field('expires', t('keys.expires'), { type: 'date' }),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, t('keys.create'))), status);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    status.clear();
    try {
      const f = formData(form);
      const body = {
        name: f.name, quota_micros: toMicros(f.quota), rpm: intOrUndef(f.rpm), tpm: intOrUndef(f.tpm),
        allowed_models: f.models.trim() ? f.models.split(',').map((m) => m.trim()).filter(Boolean) : undefined,
        expires_at: f.expires ? Math.floor(Date.parse(`${f.expires}T23:59:59Z`) / 1000) : undefined,
      };
      const k = await api('POST', admin ? '/api/keys' : '/api/me/keys', body);
      form.reset();
      created.replaceChildren(newKeyPanel(k));
      await refresh();
      created.querySelector('button')?.focus();
    } catch (err) { status.fail(err); }
  });
  const list = h('div');
  async function refresh() {
    const data = (await api('GET', admin ? '/api/keys' : '/api/me/keys')).data;
    list.replaceChildren(table([
      [t('keys.name'), (k) => k.name],
      [t('keys.label'), (k) => h('code', {}, `${k.key_prefix ?? k.key_prefix_label ?? ''}…`)],
      ...(admin ? [[t('keys.owner'), (k) => k.owner || '—']] : []),
      [t('keys.status'), (k) => h('span', { class: `badge ${k.status}` }, t(`status.${k.status}`))],
      [t('keys.limits'), (k) => [k.quota_micros != null ? `${t('keys.quota')}: ${money(k.quota_micros)}` : null, k.rpm ? `RPM ${k.rpm}` : null, k.tpm ? `TPM ${k.tpm}` : null].filter(Boolean).join(' · ') || t('keys.unlimited')],
      [t('keys.created_at'), (k) => whenSecs(k.created_at)],
      ['', (k) => (k.status === 'active' ? h('button', {
        type: 'button', class: 'small danger', 'aria-label': `${t('keys.revoke')} ${k.name}`,
        onclick: async () => {
          if (!window.confirm(t('keys.revoke_confirm', { name: k.name }))) return;
          try { await api('DELETE', `${admin ? '/api/keys' : '/api/me/keys'}/${encodeURIComponent(k.id)}`); await refresh(); } catch (err) { status.fail(err); }
        },
      }, t('keys.revoke')) : '')],
    ], data, { empty: t('keys.empty') }));
  }
  list.replaceChildren(table([], [], { empty: '' }));
  await refresh();
  void keys;
  return [h('h1', {}, t('nav.keys')), created, section(t('keys.create'), form), section(t('keys.yours'), list)];
}

// ---- request logs ----

const LOG_FILTERS = ['from', 'to', 'key_id', 'user_id', 'model', 'channel', 'status'];

function logQuery(f) {
  const q = new URLSearchParams();
  if (f.from) q.set('from_ms', String(Date.parse(f.from)));
  if (f.to) q.set('to_ms', String(Date.parse(f.to)));
  for (const k of ['key_id', 'user_id', 'model', 'channel', 'status']) if (f[k]) q.set(k, f[k]);
  return q;
}

function logDetail(e) {
  const u = e.usage || {};
  return h('div', { class: 'detail' },
    h('h3', {}, t('logs.usage')),
    table([[t('logs.bucket'), (r) => r[0]], [t('dash.tokens'), (r) => num(r[1])]], [
      ['input_uncached', u.input_uncached], ['cache_read', u.cache_read], ['cache_write_5m', u.cache_write_5m],
      ['cache_write_1h', u.cache_write_1h], ['output', u.output], ['reasoning', u.reasoning],
    ].filter((r) => r[1] !== undefined)),
    h('h3', {}, t('logs.attempts')),
    table([
      ['#', (a) => a.index ?? ''], [t('logs.channel'), (a) => a.channel ?? ''], [t('logs.status'), (a) => a.status ?? ''],
      [t('logs.outcome'), (a) => a.outcome ?? a.error ?? a.class ?? ''], [t('logs.latency'), (a) => (a.latency_ms ?? a.ms ?? '')],
    ], (e.attempts || []).map((a, i) => ({ index: i + 1, ...a })), { empty: t('logs.one_attempt') }),
    h('pre', { class: 'raw' }, JSON.stringify(e, null, 2)));
}

async function logsPage(params) {
  const admin = isAdmin();
  const base = admin ? '/api/logs' : '/api/me/logs';
  const f = Object.fromEntries(LOG_FILTERS.map((k) => [k, params.get(k) || '']));
  const form = h('form', { class: 'grid-form filters', 'aria-label': t('logs.filters') },
    field('from', t('dash.from'), { type: 'datetime-local', value: f.from }),
    field('to', t('dash.to'), { type: 'datetime-local', value: f.to }),
    field('key_id', t('logs.key_id'), { value: f.key_id }),
    admin ? field('user_id', t('logs.user_id'), { value: f.user_id }) : null,
    field('model', t('logs.model'), { value: f.model }),
    admin ? field('channel', t('logs.channel'), { value: f.channel }) : null,
    field('status', t('logs.status'), {
      value: f.status,
      options: [['', t('logs.any')], ['ok', t('logs.ok')], ['error', t('logs.error')], ['4xx', '4xx'], ['5xx', '5xx'], ['429', '429']],
    }),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, t('logs.apply'))));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams(Object.entries(formData(form)).filter(([, v]) => v));
    location.hash = `#/logs?${q}`;
  });
  const query = logQuery(f);
  const csv = new URLSearchParams(query);
  csv.set('format', 'csv');
  const exportLink = h('a', { class: 'button secondary', href: `${base}?${csv}`, download: 'requests.csv', 'data-testid': 'csv-export' }, t('logs.export'));
  const rowsBox = h('div');
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, t('logs.more'));
  const status = notice();
  let cursor = null;
  let all = [];
  const columns = [
    [t('logs.time'), (e) => when(e.created_at_ms)],
    [t('logs.model'), (e) => h('code', {}, e.model)],
    ...(admin ? [[t('logs.channel'), (e) => e.channel]] : []),
    [t('logs.status'), (e) => h('span', { class: `badge ${e.status >= 400 ? 'disabled' : 'active'}` }, e.status)],
    [t('dash.tokens'), (e) => num(Object.values(e.usage || {}).reduce((a, b) => a + (Number(b) || 0), 0) - (e.usage?.reasoning || 0))],
    [t('dash.spend'), (e) => money(e.cost_micros)],
    [t('logs.latency'), (e) => `${e.latency_ms} ms`],
    [t('logs.request_id'), (e) => h('code', { class: 'rid' }, e.request_id)],
  ];
  function draw() {
    rowsBox.replaceChildren(table(columns, all, {
      empty: t('logs.empty'),
      onRow: (e, tr) => {
        const next = tr.nextElementSibling;
        if (next?.classList.contains('detail-row')) { next.remove(); tr.setAttribute('aria-expanded', 'false'); return; }
        tr.setAttribute('aria-expanded', 'true');
        tr.after(h('tr', { class: 'detail-row' }, h('td', { colspan: columns.length }, logDetail(e))));
      },
    }));
  }
  async function load() {
    const q = new URLSearchParams(query);
    q.set('limit', '50');
    if (cursor) q.set('cursor', cursor);
    try {
      const page = await api('GET', `${base}?${q}`);
      all = all.concat(page.data);
      cursor = page.next_cursor;
      more.hidden = !cursor;
      draw();
    } catch (err) { status.fail(err); }
  }
  more.addEventListener('click', load);
  await load();
  return [h('h1', {}, t('nav.logs')), section(t('logs.filters'), form), h('div', { class: 'row' }, exportLink, h('span', { class: 'muted' }, t('logs.hint'))), status, rowsBox, more];
}

// ---- my account ----

async function accountPage() {
  const [me, ledger, invitation] = await Promise.all([
    api('GET', '/api/me'), api('GET', '/api/me/ledger?limit=50'), api('GET', '/api/me/invitation').catch(() => null),
  ]);
  const status = notice();
  const balance = h('strong', { 'data-testid': 'balance' }, money(ledger.balance_micros));
  const entries = h('div');
  const drawEntries = (l) => entries.replaceChildren(table([
    [t('account.when'), (e) => when(e.created_at_ms)], [t('account.kind'), (e) => t(`ledger.${e.kind}`)],
    [t('account.amount'), (e) => h('span', { class: e.amount_micros < 0 ? 'neg' : 'pos' }, money(e.amount_micros))],
    [t('account.reason'), (e) => e.reason || '—'],
  ], l.data, { empty: t('account.no_entries') }));
  drawEntries(ledger);
  const redeem = h('form', { class: 'row', 'aria-label': t('account.redeem') },
    field('code', t('account.code'), { required: true, autocomplete: 'off', spellcheck: 'false' }),
    h('button', { type: 'submit' }, t('account.redeem')));
  redeem.addEventListener('submit', async (e) => {
    e.preventDefault();
    status.clear();
    try {
      const booked = await api('POST', '/api/me/redeem', { code: formData(redeem).code.trim() });
      const l = await api('GET', '/api/me/ledger?limit=50');
      balance.textContent = money(l.balance_micros);
      drawEntries(l);
      redeem.reset();
      status.ok(t('account.redeemed', { amount: money(booked?.amount_micros ?? booked?.entry?.amount_micros ?? 0) }));
    } catch (err) { status.fail(err); }
  });
  const pw = h('form', { class: 'row', 'aria-label': t('account.password') },
    field('password', t('account.new_password'), { type: 'password', autocomplete: 'new-password', minlength: 8, required: true }),
    h('button', { type: 'submit', class: 'secondary' }, t('account.change_password')));
  pw.addEventListener('submit', async (e) => {
    e.preventDefault();
    try { await api('PATCH', '/api/me', { password: formData(pw).password }); status.ok(t('account.password_changed')); pw.reset(); } catch (err) { status.fail(err); }
  });
  return [
    h('h1', {}, t('nav.account')),
    h('div', { class: 'cards' },
      h('div', { class: 'stat' }, h('span', { class: 'stat-label' }, t('account.balance')), balance),
      h('div', { class: 'stat' }, h('span', { class: 'stat-label' }, t('account.spent')), h('strong', {}, money(ledger.spent_micros))),
      h('div', { class: 'stat' }, h('span', { class: 'stat-label' }, t('account.group')), h('strong', {}, me.group))),
    status,
    section(t('account.redeem'), redeem),
    invitation?.code ? section(t('account.invitation'), h('div', { class: 'row' }, h('code', {}, invitation.code), copyButton(invitation.code))) : null,
    section(t('account.ledger'), entries),
    section(t('account.password'), pw),
  ];
}

export const userPages = {
  login: { title: 'login.title', render: loginPage },
  signup: { title: 'signup.title', render: signupPage },
  pricing: { title: 'pricing.title', render: pricingPage },
  dashboard: { title: 'nav.dashboard', auth: true, render: dashboardPage },
  keys: { title: 'nav.keys', auth: true, render: keysPage },
  logs: { title: 'nav.logs', auth: true, render: logsPage },
  account: { title: 'nav.account', auth: true, render: accountPage },
  notfound: { title: 'notfound.title', render: () => [h('h1', {}, t('notfound.title')), h('p', {}, h('a', { href: '#/' }, t('notfound.back')))] },
};
