// The web console in a real browser (headless Chromium), against the real
// stack: the worker under `wrangler dev`, the admin binary serving the
// console, the mock upstream. A user signs in, creates a key and uses it
// with the official openai SDK, finds the request in the logs and on the
// dashboard, redeems a code; the user cannot reach admin pages; an admin
// adds a channel and presses "test" (a pinned request through the edge),
// disables a channel (the edge stops routing to it) and enables it, edits one,
// sets a channel's advanced settings (time limits, breaker, media hosts, mock
// delays; more keys and their rotation on a new one) and finds them in the
// routing config the edge holds;
// Chinese and phone width; /metrics parsed with a Prometheus text-format
// parser, moving with traffic; the admin's JSON log lines carry no secret.
// Screenshots: target/browser-screenshots/ (SCREENSHOTS_DIR=docs/screenshots
// refreshes the README's).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { startStack, CANARY_PROVIDER_KEY } from '../e2e/stack.mjs';
import { MESSAGES } from '../../admin/static/i18n.js';
import { launchBrowser, screenshot } from './browser.mjs';

const OPS_PASSWORD = 'ops-password-0123';
const ALICE_PASSWORD = 'alice-password-0123';
const secrets = [OPS_PASSWORD, ALICE_PASSWORD];

let stack;
let browser;
let page;
let alice;
let aliceKey;
let code;
let requestId;

async function waitUntil(what, fn, timeoutMs = 30_000) {
  const start = Date.now();
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

/** Shows a console page (reloading it when it is the current one) and waits until it has loaded. */
async function open(route) {
  const url = `${stack.adminUrl}/#/${route}`;
  if (page.url() === url) await page.reload();
  else await page.goto(url);
  const name = route.split('?')[0];
  await page.waitForSelector(`main[data-page="${name}"][data-ready="true"]`);
}

async function signIn(username, password) {
  await open('login');
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByLabel('Password').press('Enter');
  await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
}

const amount = (text) => Number.parseFloat(text.replace(/,/g, ''));

describe('the web console in Chromium', () => {
  before(async () => {
    stack = await startStack({ adminIngest: true, adminEnv: { LOG_FORMAT: 'json', RUST_LOG: 'info' } });
    secrets.push(stack.adminToken, stack.secret);
    await stack.adminApi('POST', '/api/users', { username: 'ops', password: OPS_PASSWORD, role: 'admin' });
    alice = await stack.adminApi('POST', '/api/users', { username: 'alice', password: ALICE_PASSWORD });
    alice = alice.user ?? alice;
    await stack.adminApi('POST', `/api/users/${alice.id}/ledger`, { kind: 'topup', amount_micros: 5_000_000, reason: 'e2e' });
    code = (await stack.adminApi('POST', '/api/codes', { count: 1, value_micros: 2_000_000 })).data[0].code;
    secrets.push(code);
    browser = await launchBrowser();
    page = await browser.newPage();
    page.setDefaultTimeout(10_000);
    page.on('pageerror', (err) => console.error('page error:', err.message));
    page.on('console', (msg) => { if (msg.type() === 'error') console.error('console error:', msg.text()); });
  });

  after(async () => {
    await browser?.close();
    await stack?.stop();
  });

  it('shows the public pricing page without signing in', async () => {
    await open('pricing');
    await page.getByRole('cell', { name: 'mock-1', exact: true }).waitFor();
    const text = await page.locator('main').innerText();
    assert.match(text, /gpt-test/);
    assert.doesNotMatch(text, /mock-upstream/, 'no channel names on the public page');
    await screenshot(page, 'pricing');
  });

  it('signs a user in with the keyboard only, focus visible', async () => {
    await open('login');
    // The username field has focus; Tab moves to the password field, with a visible outline.
    await page.keyboard.type('alice');
    await page.keyboard.press('Tab');
    const outline = await page.evaluate(() => {
      const s = getComputedStyle(document.activeElement);
      return { name: document.activeElement.name, style: s.outlineStyle, width: Number.parseFloat(s.outlineWidth) };
    });
    assert.equal(outline.name, 'password');
    assert.notEqual(outline.style, 'none', 'keyboard focus is visible');
    assert.ok(outline.width >= 2, `outline ${outline.width}px`);
    await screenshot(page, 'login');
    await page.keyboard.type(ALICE_PASSWORD);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
  });

  it('creates a key shown once, with copy and SDK snippets, that works with the openai SDK', async () => {
    await browser.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: stack.adminUrl });
    await open('keys');
    await page.getByLabel('Name', { exact: true }).fill('sdk key');
    await page.getByRole('button', { name: 'Create a key' }).click();
    const shown = page.getByTestId('new-key');
    await shown.waitFor();
    aliceKey = (await shown.innerText()).trim();
    secrets.push(aliceKey);
    assert.match(aliceKey, /^sk-/);
    await page.locator('.new-key').getByRole('button', { name: 'Copy' }).first().click();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), aliceKey, 'the copy button copies the key');
    assert.deepEqual(
      await page.locator('.snippet summary').allInnerTexts(),
      ['OpenAI (Python)', 'OpenAI (Node)', 'Anthropic (Python)', 'Gemini (Python)', 'curl'],
    );
    await page.locator('.snippet summary', { hasText: 'OpenAI (Node)' }).click();
    const node = await page.locator('.snippet', { hasText: 'OpenAI (Node)' }).locator('pre').innerText();
    assert.ok(node.includes(aliceKey) && node.includes(`${stack.gatewayUrl}/v1`), node);
    await screenshot(page, 'keys');

    const client = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: aliceKey, maxRetries: 0 });
    const reply = await client.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'hello from the console test' }] });
    assert.equal(typeof reply.choices[0].message.content, 'string');

    // Listed afterwards without the key itself.
    await open('keys');
    await page.getByRole('cell', { name: 'sdk key', exact: true }).waitFor();
    assert.ok(!(await page.locator('main').innerText()).includes(aliceKey), 'the key is shown only once');
  });

  it('finds the request in the logs; a row opens its attempts and usage; the CSV export has it', async () => {
    await waitUntil('the request in the logs', async () => {
      await open('logs');
      return (await page.locator('main tbody tr').count()) > 0;
    });
    const row = page.locator('main tbody tr').first();
    assert.match(await row.innerText(), /mock-1/);
    requestId = (await row.locator('.rid').innerText()).trim();
    await row.click();
    await page.getByRole('heading', { name: 'Usage buckets' }).waitFor();
    await page.getByRole('heading', { name: 'Attempts' }).waitFor();
    // Filters: a model that was not used finds nothing.
    await page.getByLabel('Model').fill('no-such-model');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.getByText('No requests match.').waitFor();
    await open('logs?model=mock-1');
    await page.locator('main tbody tr').first().waitFor();
    await screenshot(page, 'logs');
    const csv = await page.evaluate(async () => {
      const r = await fetch(document.querySelector('[data-testid=csv-export]').href);
      return { type: r.headers.get('content-type'), text: await r.text() };
    });
    assert.match(csv.type, /^text\/csv/);
    const lines = csv.text.trim().split('\n');
    assert.match(lines[0], /^created_at_ms,request_id,/);
    assert.equal(lines.length, 2, csv.text);
    assert.ok(lines[1].includes(requestId) && lines[1].includes('mock-1'));
  });

  it('counts the request on the dashboard, with charts', async () => {
    await open('dashboard');
    const requests = page.locator('[data-stat=requests] strong');
    assert.equal(await requests.innerText(), '1');
    await page.locator('.chart canvas').first().waitFor();
    assert.ok((await page.locator('.chart canvas').count()) >= 3, 'three uPlot charts');
    assert.match(await page.locator('main').innerText(), /By model[\s\S]*mock-1/);
    await screenshot(page, 'dashboard');
  });

  it('redeems a code and the balance rises by its value', async () => {
    await open('account');
    const before = amount(await page.getByTestId('balance').innerText());
    assert.ok(before > 4.99 && before < 5, `5 minus one tiny request: ${before}`);
    await page.getByLabel('Code', { exact: true }).fill(code);
    await page.getByRole('button', { name: 'Redeem a code' }).click();
    await page.getByText(/Redeemed: 2\.00 added/).waitFor();
    const after = amount(await page.getByTestId('balance').innerText());
    assert.ok(Math.abs(after - before - 2) < 1e-6, `${before} + 2 = ${after}`);
    assert.match(await page.locator('main').innerText(), /redemption/);
    // The same code again is refused with the reason.
    await page.getByLabel('Code', { exact: true }).fill(code);
    await page.getByRole('button', { name: 'Redeem a code' }).click();
    await page.getByText('this code has already been redeemed').waitFor();
    await screenshot(page, 'account');
  });

  it('keeps a user out of admin pages, in the console and in the API', async () => {
    const nav = await page.locator('nav').innerText();
    for (const admin of ['Channels', 'Users', 'Redemption codes']) assert.ok(!nav.includes(admin), `no ${admin} link for a user`);
    for (const route of ['users', 'channels', 'codes']) {
      await open(route);
      await page.getByRole('heading', { name: 'Not allowed' }).waitFor();
      assert.equal(await page.locator('main table').count(), 0);
    }
    const statuses = await page.evaluate(async () => {
      const s = await (await fetch('/api/auth/session')).json();
      const post = (path) => fetch(path, { method: 'POST', headers: { 'content-type': 'application/json', 'x-csrf-token': s.csrf_token }, body: '{}' });
      return [
        (await fetch('/api/users')).status, (await fetch('/api/codes')).status, (await fetch('/api/logs')).status,
        (await fetch('/api/stats')).status, (await post('/api/channels/mock-upstream/test')).status,
      ];
    });
    assert.deepEqual(statuses, [403, 403, 403, 403, 403]);
  });

  it('switches to Chinese and back', async () => {
    await open('dashboard');
    await page.locator('[data-lang=zh]').click();
    await page.getByRole('heading', { name: '仪表盘' }).waitFor();
    assert.equal(await page.evaluate(() => document.documentElement.lang), 'zh-CN');
    assert.match(await page.locator('nav').innerText(), /令牌[\s\S]*请求日志/);
    await screenshot(page, 'dashboard-zh');
    await page.reload();
    await page.getByRole('heading', { name: '仪表盘' }).waitFor();
    await page.locator('[data-lang=en]').click();
    await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
  });

  it('works at phone width: the menu collapses and opens', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await open('dashboard');
    assert.equal(await page.locator('nav').isVisible(), false);
    const toggle = page.getByRole('button', { name: 'Menu' });
    await toggle.click();
    assert.equal(await toggle.getAttribute('aria-expanded'), 'true');
    await page.getByRole('link', { name: 'Keys' }).waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no horizontal scrolling (${overflow}px)`);
    await screenshot(page, 'phone');
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  it('lets an admin add a channel and test it through the edge, pinned', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForSelector('main[data-page="login"][data-ready="true"]');
    await signIn('ops', OPS_PASSWORD);
    await open('channels');
    await page.getByLabel('Id', { exact: true }).fill('console-mock');
    await page.getByLabel('Provider').selectOption('mock');
    await page.getByText('The built-in mock answers deterministically').waitFor();
    await page.getByLabel('Model', { exact: true }).fill('console-model');
    await page.getByLabel('Input / 1M').fill('0.5');
    await page.getByLabel('Output / 1M').fill('1.5');
    await page.getByRole('button', { name: 'Add channel' }).click();
    await page.getByText('Channel added and pushed to the edge.').waitFor();
    for (const channel of ['console-mock', 'mock-upstream']) {
      await page.getByRole('button', { name: `Test ${channel}` }).click();
      const result = page.locator(`.test-result[data-channel="${channel}"]`);
      await page.waitForFunction((c) => /^\d{3} · /.test(document.querySelector(`.test-result[data-channel="${c}"]`)?.textContent || ''), channel);
      assert.match(await result.innerText(), /^200 · \d+ ms/);
      assert.equal(await result.getAttribute('class'), 'test-result ok');
    }
    // Each channel's health at the edge: no circuit open.
    await page.waitForFunction(() => document.querySelector('[data-health="console-mock"]')?.textContent === 'healthy');
    await screenshot(page, 'channels');
    // The test was pinned: the edge says which channel served it.
    const direct = await stack.adminApi('POST', '/api/channels/console-mock/test');
    assert.equal(direct.served_channel, 'console-mock');
    assert.equal(direct.status, 200);
  });

  it('lets an admin disable a channel from the keyboard (the edge stops routing to it) and enable it again', async () => {
    await open('channels');
    // console-model is served by console-mock alone.
    const client = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: aliceKey, maxRetries: 0 });
    const ask = () => client.chat.completions.create({ model: 'console-model', messages: [{ role: 'user', content: 'hi' }] });
    const outcome = () => ask().then(() => 200, (err) => err.status ?? String(err));
    await waitUntil('console-model to be served', async () => (await outcome()) === 200);
    const badge = page.locator('[data-enabled="console-mock"]');
    assert.equal(await badge.innerText(), 'yes');

    await page.getByRole('button', { name: 'Disable console-mock', exact: true }).focus();
    await page.keyboard.press('Enter');
    // The notice comes once the list shows the change.
    await page.getByText('Channel console-mock disabled: routing skips it.').waitFor();
    assert.equal(await badge.innerText(), 'no');
    assert.equal(await badge.getAttribute('class'), 'badge disabled');
    const enable = page.getByRole('button', { name: 'Enable console-mock', exact: true });
    assert.equal(await enable.evaluate((b) => b === document.activeElement), true, 'focus stays on the toggle');
    await screenshot(page, 'channels-disabled');
    const view = (await stack.adminApi('GET', '/api/channels')).data.find((c) => c.id === 'console-mock');
    assert.equal(view.enabled, false);
    // The edge skips it: the model only it serves is not found any more.
    let refused;
    await waitUntil('the edge to stop routing to console-mock', async () => {
      try { await ask(); return false; } catch (err) { refused = err; return err.status === 404; }
    });
    assert.match(refused.message, /console-model/);
    assert.equal(refused.code, 'model_not_found');
    // The pinned test still reaches a disabled channel.
    await page.getByRole('button', { name: 'Test console-mock' }).click();
    await page.waitForFunction(() => /^\d{3} · /.test(document.querySelector('.test-result[data-channel="console-mock"]')?.textContent || ''));
    assert.match(await page.locator('.test-result[data-channel="console-mock"]').innerText(), /^200 · /);

    await enable.click();
    await page.getByText('Channel console-mock enabled.').waitFor();
    assert.equal(await badge.innerText(), 'yes');
    await waitUntil('console-model to be served again', async () => (await outcome()) === 200);
  });

  it('lets an admin edit a channel: the form opens filled in, a blank key keeps the stored one', async () => {
    await open('channels');
    assert.equal(await page.locator('[data-timeout="mock-upstream"]').innerText(), '1500');
    const edit = page.getByRole('button', { name: 'Edit mock-upstream', exact: true });
    await edit.click();
    const form = page.getByRole('form', { name: 'Edit channel mock-upstream' });
    await form.waitFor();
    assert.equal(await form.getByLabel('Id', { exact: true }).inputValue(), 'mock-upstream');
    assert.equal(await form.getByLabel('Id', { exact: true }).getAttribute('readonly'), '');
    assert.equal(await form.getByLabel('Provider').isDisabled(), true);
    assert.equal(await form.getByLabel('Base URL').inputValue(), `${stack.mockUrl}/v1`);
    assert.equal(await form.getByLabel('Base URL').evaluate((el) => el === document.activeElement), true, 'focus moves into the form');
    const key = form.getByLabel('API key (stored)');
    assert.equal(await key.inputValue(), '', 'a stored key is never shown');
    assert.equal(await key.getAttribute('placeholder'), 'blank: keep 1 stored');
    assert.equal(await form.getByLabel('Timeout (ms)', { exact: true }).inputValue(), '1500');
    assert.ok(!(await page.content()).includes(CANARY_PROVIDER_KEY), 'the upstream key is not in the page');
    await form.getByLabel('Timeout (ms)', { exact: true }).fill('4000');
    await screenshot(page, 'channel-edit');
    await form.getByRole('button', { name: 'Save changes' }).click();
    await page.getByText('Channel saved and pushed to the edge.').waitFor();
    assert.equal(await page.locator('[data-timeout="mock-upstream"]').innerText(), '4000');
    // The form is the add form again.
    await page.getByRole('form', { name: 'Add channel' }).waitFor();
    assert.equal(await page.getByLabel('Id', { exact: true }).getAttribute('readonly'), null);
    assert.equal(await page.locator('#channel-form button', { hasText: 'Cancel' }).isVisible(), false, 'no cancel when adding');
    const view = (await stack.adminApi('GET', '/api/channels')).data.find((c) => c.id === 'mock-upstream');
    assert.equal(view.timeout_ms, 4000);
    assert.equal(view.credentials, 1, 'the stored key stays');
    assert.equal(view.models.length, 10, 'the models stay');
    // The kept key still works upstream: the pinned test passes.
    await page.getByRole('button', { name: 'Test mock-upstream' }).click();
    await page.waitForFunction(() => /^\d{3} · /.test(document.querySelector('.test-result[data-channel="mock-upstream"]')?.textContent || ''));
    assert.match(await page.locator('.test-result[data-channel="mock-upstream"]').innerText(), /^200 · /);
    // Cancel leaves an edit unsaved and returns focus to the row's button.
    await edit.click();
    await page.getByRole('form', { name: 'Edit channel mock-upstream' }).getByLabel('Timeout (ms)', { exact: true }).fill('9');
    await page.getByRole('button', { name: 'Cancel' }).click();
    assert.equal(await edit.evaluate((b) => b === document.activeElement), true);
    assert.equal((await stack.adminApi('GET', '/api/channels')).data.find((c) => c.id === 'mock-upstream').timeout_ms, 4000);
  });

  it("lets an admin set a channel's advanced settings: checked, in the edge's routing config, shown in its row", async () => {
    await open('channels');
    await page.getByRole('button', { name: 'Edit console-mock', exact: true }).click();
    const form = page.getByRole('form', { name: 'Edit channel console-mock' });
    await form.waitFor();
    await form.getByText('Advanced settings').click();
    await form.getByLabel('First-content timeout (ms)').fill('20000');
    await form.getByLabel('Idle timeout (ms)').fill('9 s');
    await form.getByLabel('Breaker: failures to open (0 = off)').fill('2');
    await form.getByLabel('Breaker: window (ms)').fill('10000');
    await form.getByLabel('Breaker: open for (ms)').fill('999999');
    await form.getByLabel('Private media hosts (comma-separated)').fill('minio.lan, 10.0.0.9');
    await form.getByLabel('Mock: latency (ms)').fill('400');
    await form.getByLabel('Mock: delay between chunks (ms)').fill('5');
    const save = form.getByRole('button', { name: 'Save changes' });
    // The form refuses what is not a whole number; the server, what is out of range.
    await save.click();
    await form.getByText('Idle timeout (ms): “9 s” is not a whole number.').waitFor();
    await form.getByLabel('Idle timeout (ms)').fill('9000');
    await save.click();
    await form.getByText('`open_ms` at most 300000').waitFor();
    const routed = async () => (await stack.internal('GET', '/internal/routing')).channels.find((c) => c.id === 'console-mock');
    assert.equal((await routed()).breaker, undefined, 'a refused change reaches nothing');
    await form.getByLabel('Breaker: open for (ms)').fill('4000');
    await screenshot(page, 'channel-advanced');
    await save.click();
    await page.getByText('Channel saved and pushed to the edge.').waitFor();
    // What the edge routes with.
    const atEdge = await routed();
    assert.equal(atEdge.first_content_timeout_ms, 20000);
    assert.equal(atEdge.idle_timeout_ms, 9000);
    assert.deepEqual(atEdge.breaker, { failures: 2, window_ms: 10000, open_ms: 4000 });
    assert.deepEqual(atEdge.media_hosts, ['minio.lan', '10.0.0.9']);
    assert.deepEqual(atEdge.mock, { latency_ms: 400, chunk_delay_ms: 5 });
    // The row shows them.
    const settings = page.locator('[data-settings="console-mock"]');
    await settings.locator('summary').click();
    const setting = (key) => settings.locator(`[data-setting="${key}"]`).innerText();
    assert.equal(await setting('first_content_timeout_ms'), '20000 ms');
    assert.equal(await setting('idle_timeout_ms'), '9000 ms');
    assert.equal(await setting('breaker'), '2 failures within 10000 ms open it for 4000 ms');
    assert.equal(await setting('media_hosts'), 'minio.lan, 10.0.0.9');
    assert.equal(await setting('mock'), 'latency 400 ms, chunks every 5 ms');
    // Editing again opens the group filled in; a cleared breaker is the default again.
    await page.getByRole('button', { name: 'Edit console-mock', exact: true }).click();
    assert.equal(await form.getByLabel('Idle timeout (ms)').isVisible(), true, 'the group opens when anything is set');
    assert.equal(await form.getByLabel('Breaker: window (ms)').inputValue(), '10000');
    assert.equal(await page.getByText('Channel saved and pushed to the edge.').count(), 0, 'the earlier notice is gone while editing');
    for (const name of ['failures to open (0 = off)', 'window (ms)', 'open for (ms)']) await form.getByLabel(`Breaker: ${name}`).fill('');
    await save.click();
    await page.getByText('Channel saved and pushed to the edge.').waitFor();
    assert.equal((await routed()).breaker, undefined);
    assert.equal((await routed()).idle_timeout_ms, 9000, 'the rest stays');
    const client = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: aliceKey, maxRetries: 0 });
    const started = Date.now();
    await client.chat.completions.create({ model: 'console-model', messages: [{ role: 'user', content: 'slowly' }] });
    // The edge honours the mock's latency (a request to it takes tens of ms otherwise).
    assert.ok(Date.now() - started >= 400, `the mock waits its latency (${Date.now() - started} ms)`);

    // A new channel with three keys taken at random; the mock's fields are
    // only for the mock provider.
    await page.getByLabel('Id', { exact: true }).fill('console-keys');
    await page.getByLabel('Provider').selectOption('openai-compatible');
    assert.equal(await page.locator('[data-mock-fields]').isHidden(), true);
    await page.getByLabel('Base URL').fill(`${stack.mockUrl}/v1`);
    await page.getByLabel('API key (stored)').fill('sk-console-key-a-000000');
    await page.getByText('Advanced settings').click();
    await page.getByLabel('More API keys (one per line)').fill('sk-console-key-b-000000\nsk-console-key-c-000000');
    await page.getByLabel('Key rotation').selectOption('random');
    await page.getByLabel('Model', { exact: true }).fill('console-keys-model');
    await page.getByLabel('Upstream model').fill('gpt-test');
    await page.getByRole('button', { name: 'Add channel' }).click();
    await page.getByText('Channel added and pushed to the edge.').waitFor();
    const view = (await stack.adminApi('GET', '/api/channels')).data.find((c) => c.id === 'console-keys');
    assert.equal(view.credentials, 3);
    assert.equal(view.key_rotation, 'random');
    const keys = (await stack.internal('GET', '/internal/routing')).channels.find((c) => c.id === 'console-keys');
    assert.deepEqual([keys.api_key, keys.api_keys, keys.key_rotation], ['sk-console-key-a-000000', ['sk-console-key-b-000000', 'sk-console-key-c-000000'], 'random']);
    assert.ok(!(await page.content()).includes('sk-console-key-b'), 'no key is left in the page');
    await page.locator('[data-settings="console-keys"] summary').click();
    assert.equal(await page.locator('[data-settings="console-keys"] [data-setting="keys"]').innerText(), '3, taken at random');
  });

  it('shows an admin the codes (which were used), users, models and groups', async () => {
    await open('codes');
    await page.locator('[data-code-status=redeemed]').first().waitFor();
    await page.getByLabel('How many').fill('3');
    await page.getByLabel('Value each').fill('1');
    await page.getByRole('button', { name: 'Generate a batch' }).click();
    const fresh = await page.getByTestId('new-codes').innerText();
    assert.equal(fresh.trim().split('\n').length, 3);
    assert.equal(await page.locator('[data-code-status=active]').count(), 3);
    await screenshot(page, 'codes');
    await open('users');
    await page.getByRole('cell', { name: 'alice', exact: true }).waitFor();
    await screenshot(page, 'users');
    await open('models');
    await page.getByRole('cell', { name: 'console-model', exact: true }).waitFor();
    await screenshot(page, 'models');
    await open('groups');
    await page.locator('form[aria-label="Add group"]').getByLabel('Group').fill('vip');
    await page.locator('form[aria-label="Add group"]').getByLabel('Price ratio').fill('1.5');
    await page.getByRole('button', { name: 'Add group' }).click();
    await page.getByRole('cell', { name: 'vip', exact: true }).waitFor();
    // The channel tests' usage reaches the dashboard through the queue and
    // the admin's ingest (about a second): reload until it is there.
    let dashboard = '';
    for (let i = 0; i < 30 && !/By channel[\s\S]*console-mock/.test(dashboard); i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 250));
      await open('dashboard');
      dashboard = await page.locator('main').innerText();
    }
    assert.match(dashboard, /By channel[\s\S]*console-mock/);
  });

  it('exports /metrics that parse and move with traffic', async () => {
    const requestsFor = async (model) => {
      const r = await fetch(`${stack.adminUrl}/metrics`);
      assert.equal(r.status, 200);
      assert.match(r.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
      const families = parsePrometheusTextFormat(await r.text());
      const family = families.find((f) => f.name === 'edgeway_usage_requests_total');
      assert.equal(family.type, 'COUNTER');
      assert.ok(families.some((f) => f.name === 'edgeway_db_pool_connections'));
      assert.ok(families.some((f) => f.name === 'edgeway_admin_http_requests_total'));
      return family.metrics.filter((m) => m.labels.model === model).reduce((s, m) => s + Number(m.value), 0);
    };
    const before = await requestsFor('mock-1');
    assert.ok(before >= 1);
    const client = new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: aliceKey, maxRetries: 0 });
    await client.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'one more' }] });
    await waitUntil('the metric to move', async () => (await requestsFor('mock-1')) === before + 1);
  });

  it('has every console string in both languages', () => {
    const en = Object.keys(MESSAGES.en).sort();
    const zh = Object.keys(MESSAGES.zh).sort();
    assert.deepEqual(en.filter((k) => !zh.includes(k)), [], 'English keys without Chinese');
    assert.deepEqual(zh.filter((k) => !en.includes(k)), [], 'Chinese keys without English');
    for (const [code, messages] of Object.entries(MESSAGES)) {
      for (const [k, text] of Object.entries(messages)) {
        assert.ok(typeof text === 'string' && text.trim(), `${code} ${k} is empty`);
        const names = (x) => [...x.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();
        assert.deepEqual(names(text), names(MESSAGES.en[k]), `${code} ${k}: the same placeholders as English`);
      }
    }
  });

  it('writes one JSON log line per admin request, with no secret in any line', async () => {
    const text = stack.admin.logs.join('');
    const lines = text.split('\n').filter((l) => l.trim());
    const parsed = lines.map((l) => JSON.parse(l));
    const requests = parsed.filter((l) => l.message === 'request');
    assert.ok(requests.length > 20, `${requests.length} request lines`);
    for (const r of requests) {
      assert.equal(typeof r.route, 'string');
      assert.equal(typeof r.status, 'number');
      assert.match(r.request_id, /^[A-Za-z0-9]{16}$/);
    }
    assert.ok(requests.some((r) => r.route === '/api/auth/login' && r.status === 200));
    for (const s of secrets) assert.ok(!text.includes(s), 'a secret reached the log');
    const logged = requests.filter((r) => r.route === '/api/logs' || r.route === '/api/me/logs');
    assert.ok(logged.length > 0 && logged.every((r) => !r.path.includes('?')), 'paths without their query strings');
  });
});
