// End-to-end: a user's balance enforced at the edge (the UserAccount and
// KeyAccount Durable Objects under `wrangler dev`), configured through the
// admin API as an operator would, spent with the official `openai` SDK.
//
// What it shows (figures printed as diagnostics):
//   - a user's three keys, 150 concurrent streams with a third aborted:
//     the user's spend never passes the balance; a key's own smaller quota
//     still holds; edge spend = D1 = the admin's ledger; nothing stays held
//   - the refusal is OpenAI's 429 insufficient_quota and says "balance"
//   - a top-up re-admits the user's keys at once (no wait, no retry)
//   - a disabled user's keys are refused; an older account push is a 409
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startStack, keyDigest } from './stack.mjs';

const PRICE = { input: 1_000_000, output: 2_000_000 }; // 1 and 2 micro-units per token
// The mock reports 11 prompt tokens and 8 completion tokens.
const MOCK_COST = 11 * 1 + 8 * 2;
// Long enough that the gateway's prompt estimate exceeds the 11 tokens the
// mock reports, so the reservation is a true worst case.
const PROMPT = 'Tell me, briefly, what an edge gateway does for a client. '.repeat(4);

let stack;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const user = (content) => [{ role: 'user', content }];

async function until(what, check, timeoutMs = 40_000, everyMs = 200) {
  const started = Date.now();
  let last;
  for (;;) {
    last = await check();
    if (last.done) return last.value;
    if (Date.now() - started > timeoutMs) {
      throw new Error(`${what}: not reached after ${timeoutMs} ms; last: ${JSON.stringify(last.value)?.slice(0, 2000)}`);
    }
    await sleep(everyMs);
  }
}

const client = (key) => new OpenAI({ baseURL: `${stack.gatewayUrl}/v1`, apiKey: key, maxRetries: 0, timeout: 30_000 });
const keyAccount = (digest) => stack.internal('GET', `/internal/keys/${digest}/account`);
const userAccount = (id) => stack.internal('GET', `/internal/users/${id}/account`);
const d1 = (digest) => stack.internal('GET', `/internal/usage/stats?key_digest=${digest}&limit=1000`);

async function newUser(username, credit) {
  const created = await stack.adminApi('POST', '/api/users', { username, password: 'correct-horse-battery-9' });
  if (credit > 0) {
    const booked = await stack.adminApi('POST', `/api/users/${created.id}/ledger`, { kind: 'topup', amount_micros: credit, reason: 'e2e' });
    assert.equal(booked.edge_synced, true, 'the top-up reached the edge');
  }
  return created.id;
}

async function newKey(userId, extra = {}) {
  const created = await stack.adminApi('POST', '/api/keys', { name: `ub ${Math.random()}`, user_id: userId, ...extra });
  return { key: created.key, digest: keyDigest(created.key) };
}

// Node's fetch can leave a body read pending forever when the request is
// aborted while the body is being read (nodejs/node#56917): stop waiting 5 s
// after an abort and check the gateway's side instead.
const ABANDONED = Symbol('abandoned after abort');
function unlessAborted(controller, promise) {
  const gaveUp = new Promise((resolve) => {
    controller.signal.addEventListener('abort', () => setTimeout(() => resolve(ABANDONED), 5000), { once: true });
  });
  return Promise.race([promise, gaveUp]);
}

async function stream(key, { signal } = {}) {
  const s = await client(key).chat.completions.create(
    { model: 'ub-paced', messages: user(PROMPT), stream: true, max_tokens: 8 }, { signal });
  for await (const _ of s) { /* drain */ }
}

/** Every key account idle, the user account holding nothing, usage delivered to D1 and the ledger. */
async function settled(userId, digests) {
  return until('user and keys quiet, usage delivered', async () => {
    const keys = await Promise.all(digests.map(keyAccount));
    const account = await userAccount(userId);
    const stored = await Promise.all(digests.map(d1));
    const ledger = (await stack.adminApi('GET', `/api/users/${userId}/ledger?limit=1`));
    const settledCount = keys.reduce((n, k) => n + k.counters.settled, 0);
    const rows = stored.reduce((n, s) => n + s.rows, 0);
    const quietKeys = keys.every((k) => k.in_flight === 0 && k.reserved_micros === 0 && k.outbox_pending === 0);
    const done = quietKeys && account.reserved_micros === 0 && rows === settledCount && ledger.spent_micros === account.spent_micros;
    return { done, value: { keys, account, stored, ledger } };
  });
}

before(async () => {
  stack = await startStack({ adminIngest: true, vars: { USAGE_RETRY_DELAY_SECS: '1' } });
  await stack.adminApi('POST', '/api/channels', {
    id: 'ub-upstream',
    provider: 'openai-compatible',
    base_url: `${stack.mockUrl}/v1`,
    api_key: 'sk-ub-upstream-secret-000000',
    timeout_ms: 5000,
    models: [{ name: 'ub-paced', upstream_model: 'paced-20', price: PRICE }],
  });
  await until('routing reaches the worker', async () => {
    const r = await fetch(`${stack.gatewayUrl}/v1/models`, { headers: { authorization: `Bearer ${stack.keys.main}` } });
    const body = await r.json();
    return { done: body.data?.some((m) => m.id === 'ub-paced'), value: body };
  });
});

after(async () => {
  if (process.env.UB_DEBUG_LOGS) console.log(stack?.logs());
  await stack?.stop();
});

test("a user's three keys under 150 concurrent streams, a third aborted: never past the balance; edge = D1 = ledger", { timeout: 150_000 }, async (t) => {
  const credit = 100 * MOCK_COST;
  const userId = await newUser('ub-alice', credit);
  // Key c also has its own quota, smaller than the balance.
  const keyQuota = 6 * MOCK_COST;
  const keys = [await newKey(userId), await newKey(userId), await newKey(userId, { quota_micros: keyQuota })];
  const messages = new Set();
  const outcomes = await Promise.all(Array.from({ length: 150 }, async (_, i) => {
    await sleep(Math.random() * 1500);
    const controller = new AbortController();
    const aborts = i % 3 === 0;
    if (aborts) setTimeout(() => controller.abort(), Math.random() * 400);
    try {
      const outcome = await unlessAborted(controller, stream(keys[i % 3].key, { signal: controller.signal }));
      return outcome === ABANDONED ? 'aborted' : 'completed';
    } catch (e) {
      if (controller.signal.aborted) return 'aborted';
      if (e.status === 429 && e.code === 'insufficient_quota') {
        messages.add(e.message);
        return 'refused';
      }
      return `other: ${e.status} ${e.message}`;
    }
  }));
  assert.deepEqual(outcomes.filter((o) => o.startsWith('other')), [], 'only completions, aborts and refusals');
  const count = (k) => outcomes.filter((o) => o === k).length;
  // Then one request at a time, from keys a and b in turn, until both are
  // refused: what the burst left must be reachable from any key (nothing
  // stuck in another key's or isolate's hold once they are idle).
  let sequential = 0;
  for (let i = 0, refusedInARow = 0; refusedInARow < 2 && i < 200; i++) {
    await sleep(50);
    try {
      await stream(keys[i % 2].key);
      sequential++;
      refusedInARow = 0;
    } catch (e) {
      assert.equal(e.status, 429, e.message);
      messages.add(e.message);
      refusedInARow++;
      await sleep(1500); // the other key's slice goes idle and gives its hold back
    }
  }
  assert.ok(count('refused') > 0, 'the balance ran out');
  assert.ok([...messages].some((m) => /balance/i.test(m)), `a refusal names the balance: ${[...messages]}`);

  const { keys: accounts, account, stored, ledger } = await settled(userId, keys.map((k) => k.digest));
  assert.equal(account.credited_micros, credit);
  assert.ok(account.spent_micros <= credit, `spent ${account.spent_micros} past the balance ${credit}`);
  // Refused only when what is left cannot cover one request's worst case
  // (its prompt's upper bound and max_tokens: a few hundred micro-units here).
  assert.ok(credit - account.spent_micros < 600, `the balance was used up (spent ${account.spent_micros} of ${credit})`);
  assert.equal(account.available_micros, credit - account.spent_micros, 'nothing held once idle');
  assert.equal(account.overrun_micros, 0);
  const keySpend = accounts.reduce((s, k) => s + k.spent_micros, 0);
  assert.equal(account.spent_micros, keySpend, "the user account's spend = the key accounts' spend");
  assert.ok(accounts[2].spent_micros <= keyQuota, `key c spent ${accounts[2].spent_micros} past its own quota ${keyQuota}`);
  const d1Spend = stored.reduce((s, x) => s + x.cost_micros, 0);
  assert.equal(d1Spend, account.spent_micros, 'D1 spend = edge spend');
  assert.equal(ledger.spent_micros, account.spent_micros, 'ledger spend = edge spend');
  assert.equal(ledger.balance_micros, credit - account.spent_micros, 'the ledger balance is the sum of its entries');
  const agreement = await stack.adminApi('GET', `/api/users/${userId}/edge-account`);
  assert.equal(agreement.credit_agrees, true);
  const figures = {
    requests: 150, completed: count('completed'), sequential_after: sequential, aborted: count('aborted'), refused: count('refused'),
    credit, spent: account.spent_micros, d1: d1Spend, ledger: ledger.spent_micros,
    per_key: accounts.map((k) => k.spent_micros), key_c_quota: keyQuota,
    refused_balance: accounts.reduce((n, k) => n + k.counters.refused_balance, 0),
    refused_quota: accounts.reduce((n, k) => n + k.counters.refused_quota, 0),
  };
  t.diagnostic(`balance figures ${JSON.stringify(figures)}`);
  console.log('FIGURES user_balance', JSON.stringify(figures));
});

test('a top-up re-admits the keys at once; a disabled user is refused; an older account push is a 409', { timeout: 90_000 }, async () => {
  const userId = await newUser('ub-bob', 2 * MOCK_COST);
  const { key, digest } = await newKey(userId);
  // Spend the balance down until the edge refuses.
  let refusal;
  for (let i = 0; i < 20 && !refusal; i++) {
    try {
      await stream(key);
    } catch (e) {
      refusal = e;
    }
  }
  assert.ok(refusal, 'refused once the balance is spent');
  assert.equal(refusal.status, 429);
  assert.equal(refusal.code, 'insufficient_quota');
  assert.match(refusal.message, /balance/i);

  const booked = await stack.adminApi('POST', `/api/users/${userId}/ledger`, { kind: 'topup', amount_micros: 20 * MOCK_COST, reason: 'e2e top-up' });
  assert.equal(booked.edge_synced, true);
  const started = Date.now();
  await stream(key); // the very next request, no retry
  const readmittedMs = Date.now() - started;

  // Older pushes (a replayed or late one) cannot roll the credit back.
  const account = await userAccount(userId);
  const older = { user_id: userId, credited_micros: 2 * MOCK_COST, version: account.version - 1, disabled: false };
  const text = JSON.stringify(older);
  const route = `/internal/users/${userId}/account`;
  const r = await stack.internalFetch('PUT', route, { text, headers: stack.signInternal('PUT', route, text) });
  assert.equal(r.status, 409);
  assert.equal(r.json.stored_version, account.version);
  assert.equal((await userAccount(userId)).credited_micros, account.credited_micros);

  // Disabling the user reaches every key at once; an isolate that holds a
  // slice hears of it at its next renewal, within 2 s (as a key revocation).
  await stack.adminApi('PATCH', `/api/users/${userId}`, { status: 'disabled' });
  const disabledAt = Date.now();
  const refusedDisabled = await until('the disabled user refused', async () => {
    try {
      await stream(key);
      return { done: false, value: 'admitted' };
    } catch (e) {
      return { done: true, value: e };
    }
  }, 5_000, 100);
  assert.equal(refusedDisabled.status, 401);
  assert.ok(Date.now() - disabledAt <= 3_000, 'within the 2 s revocation bound');
  await stack.adminApi('PATCH', `/api/users/${userId}`, { status: 'active' });
  await until('enabled again', async () => {
    try {
      await stream(key);
      return { done: true, value: 'admitted' };
    } catch (e) {
      return { done: false, value: e.message };
    }
  }, 5_000, 100);
  console.log('FIGURES top_up', JSON.stringify({ readmitted_ms: readmittedMs, digest: digest.slice(0, 8) }));
});
