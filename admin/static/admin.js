// Admin pages: channels (add, edit with advanced settings, enable/disable, test, delete), models and prices, groups,
// users (create, change, credit), redemption codes (generate, export).
import { t } from './i18n.js';
import {
  h, api, state, money, whenSecs, toMicros, intOrUndef, notice, field, formData, table, section,
} from './app.js';
import { priceColumns } from './pages.js';
import {
  advancedFields, showProvider, fillAdvanced, clearAdvanced, readAdvanced, settingsCell, keysList,
} from './channel_settings.js';

// ---- channels ----

/** Fields that only some providers need. */
function providerHint(id) {
  const p = (state.info?.providers || []).find((x) => x.id === id);
  if (!p) return '';
  if (id === 'mock') return t('channels.hint_mock');
  return p.base_url ? t('channels.hint_default_url', { url: p.base_url }) : t('channels.hint_base_url');
}

function modelRow() {
  return h('fieldset', { class: 'model-row' }, h('legend', { class: 'sr-only' }, t('channels.model')),
    field('m_name', t('channels.model'), { required: true, placeholder: 'gpt-4o-mini' }),
    field('m_upstream', t('channels.upstream_model'), { placeholder: t('channels.same') }),
    field('m_input', t('price.input'), { inputmode: 'decimal', placeholder: '0' }),
    field('m_output', t('price.output'), { inputmode: 'decimal', placeholder: '0' }),
    field('m_cache_read', t('price.cache_read'), { inputmode: 'decimal', placeholder: t('channels.same_as_input') }),
    field('m_per_request', t('price.per_request'), { inputmode: 'decimal', placeholder: '0' }));
}

/** A channel's groups as the form shows them. */
const groupsText = (groups) => (groups || []).join(', ');
const groupsList = (text) => (text ? text.split(',').map((g) => g.trim()).filter(Boolean) : []);

/** What the form's credential field says about the stored keys when editing. */
function keyPlaceholder(c) {
  return c.credentials > 0 ? t('channels.key_unchanged', { n: c.credentials }) : t('channels.key_none');
}

async function channelsPage() {
  const status = notice();
  const listStatus = notice();
  const providers = state.info?.providers || [];
  const hint = h('p', { class: 'muted', 'aria-live': 'polite' }, providerHint(providers[0]?.id));
  const models = h('div', { class: 'stack' }, modelRow());
  const addModel = h('button', { type: 'button', class: 'secondary small', onclick: () => models.append(modelRow()) }, t('channels.add_model'));
  const modelsPart = h('div', { class: 'wide' }, h('h3', {}, t('channels.models')), models, addModel);
  const modelsFixed = h('p', { class: 'muted', hidden: true }, t('channels.models_fixed'));
  const providerField = field('provider', t('channels.provider'), { options: providers.map((p) => [p.id, `${p.name} (${p.id})`]), required: true });
  providerField.querySelector('select').addEventListener('change', (e) => {
    hint.textContent = providerHint(e.target.value);
    showProvider(form, e.target.value);
  });
  const submit = h('button', { type: 'submit' }, t('channels.add'));
  const cancel = h('button', { type: 'button', class: 'secondary', hidden: true, onclick: () => { stopEditing(); } }, t('channels.cancel_edit'));
  const form = h('form', { class: 'grid-form', 'aria-label': t('channels.add') },
    field('id', t('channels.id'), { required: true, pattern: '[A-Za-z0-9_.\\-]+', placeholder: 'openai-main' }),
    providerField, hint,
    field('base_url', t('channels.base_url'), { type: 'url', placeholder: 'https://…/v1' }),
    field('api_key', t('channels.api_key'), { type: 'password', autocomplete: 'off' }),
    field('api_key_secret', t('channels.api_key_secret'), { placeholder: 'OPENAI_API_KEY' }),
    field('timeout_ms', t('channels.timeout'), { inputmode: 'numeric', placeholder: '30000' }),
    field('groups', t('channels.groups'), { placeholder: t('channels.all_groups') }),
    field('enabled', t('channels.enabled'), { options: [['true', t('common.yes')], ['false', t('common.no')]] }),
    advancedFields(),
    modelsPart, modelsFixed,
    h('div', { class: 'actions row wide' }, submit, cancel), status);
  const formTitle = h('h2', {}, t('channels.add'));
  const formCard = h('section', { class: 'card', id: 'channel-form' }, formTitle, form);
  const input = (name) => form.querySelector(`[name="${name}"]`);
  showProvider(form, providers[0]?.id);

  // Editing: the add form, pre-filled; id and provider fixed, models not
  // changed here, a blank key field keeps the stored keys.
  let editing = null;
  function startEditing(c) {
    editing = c;
    form.reset();
    // A notice about an earlier save is not about this edit.
    status.clear();
    listStatus.clear();
    input('id').value = c.id;
    input('id').readOnly = true;
    input('provider').value = c.provider;
    input('provider').disabled = true;
    hint.textContent = providerHint(c.provider);
    input('base_url').value = c.base_url || '';
    input('api_key').value = '';
    input('api_key').placeholder = keyPlaceholder(c);
    input('api_key_secret').value = c.api_key_secret || '';
    input('timeout_ms').value = c.timeout_ms ?? '';
    input('groups').value = groupsText(c.groups);
    input('enabled').value = String(c.enabled);
    fillAdvanced(form, c);
    showProvider(form, c.provider);
    // Hidden model rows must not block the form's validation.
    for (const row of models.querySelectorAll('fieldset')) row.disabled = true;
    modelsPart.hidden = true;
    modelsFixed.hidden = false;
    formTitle.textContent = t('channels.edit_title', { id: c.id });
    form.setAttribute('aria-label', formTitle.textContent);
    submit.textContent = t('channels.save');
    cancel.hidden = false;
    formCard.scrollIntoView({ block: 'start' });
    input('base_url').focus({ preventScroll: true });
  }
  function stopEditing() {
    const was = editing;
    editing = null;
    form.reset();
    input('id').readOnly = false;
    input('provider').disabled = false;
    input('api_key').placeholder = '';
    clearAdvanced(form);
    hint.textContent = providerHint(input('provider').value);
    showProvider(form, input('provider').value);
    for (const row of models.querySelectorAll('fieldset')) row.disabled = false;
    modelsPart.hidden = false;
    modelsFixed.hidden = true;
    formTitle.textContent = t('channels.add');
    form.setAttribute('aria-label', t('channels.add'));
    submit.textContent = t('channels.add');
    cancel.hidden = true;
    // Back to the row's edit button the form was opened from.
    if (was) list.querySelector(`[data-edit="${CSS.escape(was.id)}"]`)?.focus();
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    status.clear();
    try {
      const f = formData(form);
      if (editing) {
        // Every field the form shows; `null` clears one (its default applies).
        const body = {
          base_url: f.base_url.trim() || null, api_key_secret: f.api_key_secret.trim() || null,
          timeout_ms: intOrUndef(f.timeout_ms) ?? null, groups: groupsList(f.groups), enabled: f.enabled === 'true',
          ...readAdvanced(f, { editing: true }),
        };
        // Keys typed in either field replace the stored rotation; both blank keep it.
        if (f.api_key.trim() || keysList(f.api_keys).length) {
          body.api_key = f.api_key.trim() || null;
          body.api_keys = keysList(f.api_keys);
        }
        const r = await api('PATCH', `/api/channels/${encodeURIComponent(editing.id)}`, body);
        const msg = r.edge_synced ? t('channels.saved') : t('channels.saved_unsynced');
        stopEditing();
        await refresh();
        listStatus.ok(msg);
        return;
      }
      const rows = [...models.querySelectorAll('.model-row')].map((row) => {
        const v = (n) => row.querySelector(`[name="${n}"]`).value.trim();
        const price = { input: toMicros(v('m_input')) ?? 0, output: toMicros(v('m_output')) ?? 0 };
        if (v('m_cache_read')) price.cache_read = toMicros(v('m_cache_read'));
        if (v('m_per_request')) price.per_request = toMicros(v('m_per_request'));
        return { name: v('m_name'), upstream_model: v('m_upstream') || undefined, price };
      }).filter((m) => m.name);
      const body = {
        id: f.id.trim(), provider: f.provider, base_url: f.base_url || undefined, api_key: f.api_key || undefined,
        api_key_secret: f.api_key_secret || undefined, timeout_ms: intOrUndef(f.timeout_ms), enabled: f.enabled === 'true',
        groups: groupsList(f.groups), models: rows, api_keys: keysList(f.api_keys), ...readAdvanced(f, { editing: false }),
      };
      const r = await api('POST', '/api/channels', body);
      status.ok(r.edge_synced ? t('channels.added') : t('channels.added_unsynced'));
      form.reset();
      clearAdvanced(form);
      showProvider(form, input('provider').value);
      models.replaceChildren(modelRow());
      await refresh();
    } catch (err) { status.fail(err); }
  });

  /** Enables or disables a channel (routing skips a disabled one). */
  async function setEnabled(c, enabled, button) {
    listStatus.clear();
    button.disabled = true;
    try {
      const r = await api('PATCH', `/api/channels/${encodeURIComponent(c.id)}`, { enabled });
      const msg = t(enabled ? 'channels.now_enabled' : 'channels.now_disabled', { id: c.id });
      await refresh();
      listStatus.ok(r.edge_synced ? msg : `${msg} ${t('channels.unsynced')}`);
      list.querySelector(`[data-toggle="${CSS.escape(c.id)}"]`)?.focus();
    } catch (err) {
      listStatus.fail(err);
      button.disabled = false;
    }
  }

  const list = h('div');
  async function refresh() {
    const channels = (await api('GET', '/api/channels')).data;
    list.replaceChildren(table([
      [t('channels.id'), (c) => h('code', {}, c.id)],
      [t('channels.provider'), (c) => c.provider],
      [t('channels.models'), (c) => c.models.map((m) => m.name).join(', ') || '—'],
      [t('channels.enabled'), (c) => h('span', { class: `badge ${c.enabled ? 'active' : 'disabled'}`, 'data-enabled': c.id }, c.enabled ? t('common.yes') : t('common.no'))],
      [t('channels.timeout'), (c) => h('span', { 'data-timeout': c.id }, c.timeout_ms ?? '—')],
      [t('channels.credential'), (c) => (c.credentials > 1 ? t('channels.inline_keys', { n: c.credentials })
        : c.has_api_key ? t('channels.inline_key') : c.api_key_secret ? `secret ${c.api_key_secret}` : '—')],
      [t('channels.settings'), settingsCell],
      [t('channels.health'), (c) => {
        // The channel's circuits at the edge: open ones and usable keys.
        const out = h('span', { class: 'health', 'data-health': c.id, 'aria-live': 'polite' }, '…');
        api('GET', `/api/channels/${encodeURIComponent(c.id)}/health`).then((r) => {
          const open = r.circuits.filter((x) => x.state !== 'closed' && x.credential === undefined).length;
          const parts = [open ? t('channels.circuits_open', { n: open }) : t('channels.healthy')];
          if (r.credentials > 1 || r.usable_credentials < r.credentials) {
            parts.push(t('channels.keys_usable', { usable: r.usable_credentials, n: r.credentials }));
          }
          // The last round of health checks (the edge's cron).
          const checks = r.checks ?? [];
          if (r.disabled) parts.push(t('channels.disabled_by_checks'));
          else if (checks.length) {
            const ok = checks.filter((x) => x.outcome === 'ok');
            parts.push(ok.length === checks.length
              ? t('channels.checked_ok', { ms: Math.max(...ok.map((x) => x.latency_ms)) })
              : t('channels.checks_failed', { n: checks.length - ok.length, kinds: [...new Set(checks.filter((x) => x.outcome !== 'ok').map((x) => x.outcome))].join(', ') }));
          }
          out.textContent = parts.join(' · ');
          if (r.disabled) out.title = r.disabled;
          out.className = `health ${open || r.disabled || r.usable_credentials < r.credentials ? 'error' : 'ok'}`;
        }).catch(() => { out.textContent = t('channels.health_unknown'); });
        return out;
      }],
      [t('channels.test'), (c) => {
        const out = h('span', { class: 'test-result', 'data-channel': c.id, 'aria-live': 'polite' });
        const b = h('button', {
          type: 'button', class: 'small', 'aria-label': `${t('channels.test')} ${c.id}`,
          onclick: async () => {
            b.disabled = true;
            out.className = 'test-result';
            out.textContent = t('channels.testing');
            try {
              const r = await api('POST', `/api/channels/${encodeURIComponent(c.id)}/test`);
              out.className = `test-result ${r.ok ? 'ok' : 'error'}`;
              out.textContent = `${r.status} · ${r.latency_ms} ms${r.message ? ` · ${r.message}` : ''}`;
            } catch (err) {
              out.className = 'test-result error';
              out.textContent = err.message;
            } finally { b.disabled = false; }
          },
        }, t('channels.test'));
        return h('span', { class: 'row' }, b, out);
      }],
      [t('channels.actions'), (c) => {
        const toggle = h('button', {
          type: 'button', class: 'small secondary', 'data-toggle': c.id,
          'aria-label': `${c.enabled ? t('channels.disable') : t('channels.enable')} ${c.id}`,
          onclick: () => setEnabled(c, !c.enabled, toggle),
        }, c.enabled ? t('channels.disable') : t('channels.enable'));
        return h('span', { class: 'row' },
          h('button', {
            type: 'button', class: 'small secondary', 'data-edit': c.id, 'aria-label': `${t('channels.edit')} ${c.id}`,
            'aria-controls': 'channel-form', onclick: () => startEditing(c),
          }, t('channels.edit')),
          toggle,
          h('button', {
            type: 'button', class: 'small danger', 'aria-label': `${t('common.delete')} ${c.id}`,
            onclick: async () => {
              if (!window.confirm(t('channels.delete_confirm', { id: c.id }))) return;
              try {
                await api('DELETE', `/api/channels/${encodeURIComponent(c.id)}`);
                if (editing?.id === c.id) stopEditing();
                await refresh();
              } catch (err) { listStatus.fail(err); }
            },
          }, t('common.delete')));
      }],
    ], channels, { empty: t('channels.empty') }));
  }
  await refresh();
  return [h('h1', {}, t('nav.channels')), section(t('channels.list'), listStatus, list), formCard];
}

// ---- models and prices ----

async function modelsPage() {
  const m = await api('GET', '/api/models');
  return [h('h1', {}, t('nav.models')), h('p', { class: 'muted' }, t('models.lead')),
    section(t('models.title'), table([...priceColumns(),
      [t('models.targets'), (x) => x.targets.map((tg) => `${tg.channel}${tg.upstream_model ? ` → ${tg.upstream_model}` : ''} (p${tg.priority ?? 0}, w${tg.weight ?? 1})`).join('; ')],
    ], m.data, { empty: t('models.empty') })),
    h('p', { class: 'muted' }, t('models.version', { version: m.routing_version }))];
}

// ---- groups ----

async function groupsPage() {
  const status = notice();
  const list = h('div');
  async function refresh() {
    const groups = (await api('GET', '/api/groups')).data;
    list.replaceChildren(table([
      [t('groups.name'), (g) => h('code', {}, g.name)],
      [t('groups.ratio'), (g) => {
        const input = h('input', { type: 'number', step: '0.01', min: '0', value: (g.price_ratio_ppm / 1e6).toString(), 'aria-label': `${t('groups.ratio')} ${g.name}`, class: 'short' });
        const save = h('button', {
          type: 'button', class: 'small secondary', onclick: async () => {
            try { await api('PATCH', `/api/groups/${encodeURIComponent(g.name)}`, { price_ratio_ppm: Math.round(Number(input.value) * 1e6) }); status.ok(t('common.saved')); await refresh(); } catch (err) { status.fail(err); }
          },
        }, t('common.save'));
        return h('span', { class: 'row' }, '×', input, save);
      }],
      [t('groups.description'), (g) => g.description || '—'],
      ['', (g) => (g.name === 'default' ? '' : h('button', {
        type: 'button', class: 'small danger', onclick: async () => {
          if (!window.confirm(t('groups.delete_confirm', { name: g.name }))) return;
          try { await api('DELETE', `/api/groups/${encodeURIComponent(g.name)}`); await refresh(); } catch (err) { status.fail(err); }
        },
      }, t('common.delete')))],
    ], groups));
  }
  const form = h('form', { class: 'row', 'aria-label': t('groups.add') },
    field('name', t('groups.name'), { required: true, pattern: '[A-Za-z0-9_.\\-]+' }),
    field('ratio', t('groups.ratio'), { type: 'number', step: '0.01', min: '0', value: '1', required: true }),
    h('button', { type: 'submit' }, t('groups.add')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = formData(form);
    try { await api('POST', '/api/groups', { name: f.name.trim(), price_ratio_ppm: Math.round(Number(f.ratio) * 1e6) }); form.reset(); status.ok(t('common.saved')); await refresh(); } catch (err) { status.fail(err); }
  });
  await refresh();
  return [h('h1', {}, t('nav.groups')), h('p', { class: 'muted' }, t('groups.lead')), status, section(t('groups.title'), list), section(t('groups.add'), form)];
}

// ---- users ----

async function usersPage() {
  const status = notice();
  const list = h('div');
  const groups = (await api('GET', '/api/groups')).data.map((g) => g.name);
  async function refresh() {
    const users = (await api('GET', '/api/users')).data;
    list.replaceChildren(table([
      [t('login.username'), (u) => u.username],
      [t('users.role'), (u) => t(`role.${u.role}`)],
      [t('account.group'), (u) => u.group],
      [t('keys.status'), (u) => h('span', { class: `badge ${u.status}` }, t(`status.${u.status}`))],
      [t('account.balance'), (u) => (u.balance ? money(u.balance.balance_micros) : '—')],
      [t('users.created'), (u) => whenSecs(u.created_at)],
      [t('users.actions'), (u) => (u.role === 'root' ? '' : h('span', { class: 'row' },
        h('button', {
          type: 'button', class: 'small secondary', 'aria-label': `${t('users.topup')} ${u.username}`, onclick: async () => {
            const amount = window.prompt(t('users.topup_prompt', { name: u.username }), '10');
            if (!amount) return;
            try {
              await api('POST', `/api/users/${encodeURIComponent(u.id)}/ledger`, { kind: 'topup', amount_micros: toMicros(amount), reason: t('users.topup_reason') });
              status.ok(t('common.saved')); await refresh();
            } catch (err) { status.fail(err); }
          },
        }, t('users.topup')),
        h('button', {
          type: 'button', class: 'small secondary', onclick: async () => {
            try { await api('PATCH', `/api/users/${encodeURIComponent(u.id)}`, { status: u.status === 'active' ? 'disabled' : 'active' }); await refresh(); } catch (err) { status.fail(err); }
          },
        }, u.status === 'active' ? t('users.disable') : t('users.enable'))))],
    ], users));
  }
  const form = h('form', { class: 'grid-form', 'aria-label': t('users.add') },
    field('username', t('login.username'), { required: true, minlength: 3, maxlength: 32 }),
    field('password', t('login.password'), { type: 'password', autocomplete: 'new-password', minlength: 8 }),
    field('email', t('signup.email'), { type: 'email' }),
    field('role', t('users.role'), { options: [['user', t('role.user')], ['admin', t('role.admin')]] }),
    field('group', t('account.group'), { options: groups.map((g) => [g, g]) }),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, t('users.add'))));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = formData(form);
    try {
      await api('POST', '/api/users', { username: f.username, password: f.password || undefined, email: f.email || undefined, role: f.role, group: f.group });
      form.reset(); status.ok(t('common.saved')); await refresh();
    } catch (err) { status.fail(err); }
  });
  await refresh();
  return [h('h1', {}, t('nav.users')), status, section(t('users.title'), list), section(t('users.add'), form)];
}

// ---- redemption codes ----

function download(name, text, type = 'text/csv') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: name });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

async function codesPage(params) {
  const status = notice();
  const filter = params.get('status') || '';
  const list = h('div');
  const fresh = h('div');
  async function refresh() {
    const q = filter ? `?status=${encodeURIComponent(filter)}` : '';
    const codes = (await api('GET', `/api/codes${q}`)).data;
    list.replaceChildren(table([
      [t('codes.label'), (c) => h('code', {}, c.label ?? c.code_label ?? c.id)],
      [t('codes.value'), (c) => money(c.value_micros)],
      [t('keys.status'), (c) => h('span', { class: `badge ${c.status}`, 'data-code-status': c.status }, t(`status.${c.status}`))],
      [t('codes.redeemed_by'), (c) => c.redeemed_by || '—'],
      [t('codes.redeemed_at'), (c) => (c.redeemed_at ? whenSecs(c.redeemed_at) : '—')],
      [t('codes.expires'), (c) => (c.expires_at ? whenSecs(c.expires_at) : '—')],
      ['', (c) => (c.status === 'active' || c.status === 'disabled' ? h('button', {
        type: 'button', class: 'small secondary', onclick: async () => {
          try { await api('PATCH', `/api/codes/${encodeURIComponent(c.id)}`, { status: c.status === 'active' ? 'disabled' : 'active' }); await refresh(); } catch (err) { status.fail(err); }
        },
      }, c.status === 'active' ? t('users.disable') : t('users.enable')) : '')],
    ], codes, { empty: t('codes.empty') }));
  }
  const form = h('form', { class: 'grid-form', 'aria-label': t('codes.generate') },
    field('count', t('codes.count'), { type: 'number', min: 1, max: 1000, value: '10', required: true }),
    field('value', t('codes.value'), { inputmode: 'decimal', required: true, placeholder: '10' }),
    field('prefix', t('codes.prefix'), { placeholder: 'EW', maxlength: 16 }),
    field('expires', t('codes.expires'), { type: 'date' }),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, t('codes.generate'))));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    status.clear();
    try {
      const f = formData(form);
      const body = {
        count: intOrUndef(f.count), value_micros: toMicros(f.value), prefix: f.prefix || undefined,
        expires_at: f.expires ? Math.floor(Date.parse(`${f.expires}T23:59:59Z`) / 1000) : undefined,
      };
      const batch = await api('POST', '/api/codes', body);
      await refresh();
      const csv = `code,value_micros,expires_at,batch_id,id\n${batch.data.map((c) => [c.code, c.value_micros, c.expires_at ?? '', batch.batch_id, c.id].join(',')).join('\n')}\n`;
      fresh.replaceChildren(h('section', { class: 'card new-key', role: 'alert' },
        h('h2', {}, t('codes.generated', { count: batch.data.length })), h('p', { class: 'notice warn' }, t('codes.once')),
        h('button', { type: 'button', onclick: () => download(`codes-${batch.batch_id}.csv`, csv) }, t('codes.download')),
        h('pre', { class: 'codes', 'data-testid': 'new-codes' }, batch.data.map((c) => c.code).join('\n'))));
    } catch (err) { status.fail(err); }
  });
  const filters = h('div', { class: 'row', role: 'group', 'aria-label': t('codes.filter') },
    ...[['', t('logs.any')], ['active', t('status.active')], ['redeemed', t('status.redeemed')], ['disabled', t('status.disabled')]].map(([v, l]) => h('a', {
      class: `button small ${filter === v ? '' : 'secondary'}`, href: `#/codes${v ? `?status=${v}` : ''}`, 'aria-current': filter === v ? 'true' : undefined,
    }, l)),
    h('a', { class: 'button small secondary', href: `/api/codes?format=csv${filter ? `&status=${filter}` : ''}`, download: 'codes.csv' }, t('codes.export')));
  await refresh();
  return [h('h1', {}, t('nav.codes')), status, fresh, section(t('codes.generate'), form), section(t('codes.title'), filters, list)];
}

export const adminPages = {
  channels: { title: 'nav.channels', auth: true, admin: true, render: channelsPage },
  models: { title: 'nav.models', auth: true, admin: true, render: modelsPage },
  groups: { title: 'nav.groups', auth: true, admin: true, render: groupsPage },
  users: { title: 'nav.users', auth: true, admin: true, render: usersPage },
  codes: { title: 'nav.codes', auth: true, admin: true, render: codesPage },
};

