// Starts the real stack for end-to-end tests: the mock upstream (the outside
// world), the admin service binary, and the built worker under `wrangler dev`
// with local KV, D1, Durable Objects and Queues in a fresh temporary state
// directory. Configuration goes in through the admin API, as an operator's would.
import { spawn, execFileSync } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { createMockUpstream } from '../mock-upstream/server.mjs';

const ROOT = path.resolve(import.meta.dirname, '../..');
export const CANARY_PROVIDER_KEY = 'sk-canary-provider-secret-7f3a9c1e5b';

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

async function waitFor(url, timeoutMs, proc, name) {
  const start = Date.now();
  for (;;) {
    if (proc && proc.exitCode !== null) throw new Error(`${name} exited with ${proc.exitCode}:\n${proc.logs?.join('') ?? ''}`);
    try {
      const r = await fetch(url);
      if (r.status < 500) return;
    } catch {}
    if (Date.now() - start > timeoutMs) throw new Error(`${name} not ready at ${url} after ${timeoutMs} ms:\n${proc?.logs?.join('').slice(-4000) ?? ''}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function start(name, cmd, args, env, cwd = ROOT) {
  const proc = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  proc.logs = [];
  const keep = (d) => { proc.logs.push(d.toString()); if (proc.logs.length > 400) proc.logs.shift(); };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  proc.name = name;
  return proc;
}

function stopProc(proc) {
  if (!proc || proc.exitCode !== null) return;
  try { process.kill(-proc.pid, 'SIGTERM'); } catch {}
}

/** SHA-256 hex of a client key: its digest in KV, D1 and the admin. */
export function keyDigest(key) {
  return createHash('sha256').update(key).digest('hex');
}

// Options (all optional; the defaults are what every suite used first):
//   vars         extra worker vars, e.g. { RATE_WINDOW_MS: '6000' }
//   adminIngest  set ADMIN_INGEST_URL so the queue consumer also posts usage to the admin
//   adminEnv     extra environment of the admin service, e.g. { LOG_FORMAT: 'json' }
export async function startStack({ maxBodyBytes = 1024 * 1024, upstreamTimeoutMs = 1500, vars = {}, adminIngest = false, adminEnv = {} } = {}) {
  const state = mkdtempSync(path.join(tmpdir(), 'edgeway-e2e-'));
  const mock = createMockUpstream();
  const mockPort = await freePort();
  await new Promise((r) => mock.server.listen(mockPort, '127.0.0.1', r));
  const mockUrl = `http://127.0.0.1:${mockPort}`;

  const secret = `e2e-edge-secret-${Math.random().toString(36).slice(2)}-0000`;
  const adminToken = `e2e-admin-token-${Math.random().toString(36).slice(2)}-0000`;
  const workerPort = await freePort();
  const inspectorPort = await freePort();
  const adminPort = await freePort();
  const gatewayUrl = `http://127.0.0.1:${workerPort}`;
  const adminUrl = `http://127.0.0.1:${adminPort}`;

  // The stack's own dev registry: a replica worker (startReplica) binds to
  // this stack's Durable Objects, never to another suite's.
  const wranglerEnv = {
    CI: 'true', WRANGLER_SEND_METRICS: 'false', NO_UPDATE_NOTIFIER: '1',
    WRANGLER_REGISTRY_PATH: path.join(state, 'registry'),
  };
  execFileSync('wrangler', ['d1', 'migrations', 'apply', 'USAGE_DB', '--local', '--persist-to', state], {
    cwd: ROOT, env: { ...process.env, ...wranglerEnv }, stdio: 'pipe',
  });
  const workerVars = [
    '--var', `EDGE_ADMIN_SECRET:${secret}`,
    '--var', `MAX_BODY_BYTES:${maxBodyBytes}`,
    '--var', `UPSTREAM_TIMEOUT_MS:${upstreamTimeoutMs}`,
    ...Object.entries(vars).flatMap(([name, value]) => ['--var', `${name}:${value}`]),
  ];
  const worker = start('wrangler', 'wrangler', [
    'dev', '--ip', '127.0.0.1', '--port', String(workerPort), '--inspector-port', String(inspectorPort),
    '--persist-to', state, '--log-level', 'warn', '--show-interactive-dev-session=false',
    // GET /__scheduled runs the cron's handler (a round of health checks).
    '--test-scheduled',
    ...workerVars,
    ...(adminIngest ? ['--var', `ADMIN_INGEST_URL:${adminUrl}`] : []),
  ], wranglerEnv);

  const adminBin = path.join(ROOT, 'target', 'debug', 'edgeway-admin');
  if (!existsSync(adminBin)) throw new Error(`admin binary missing at ${adminBin}: run cargo build -p edgeway-admin`);
  const launchAdmin = () => start('admin', adminBin, [], {
    DATABASE_URL: `sqlite://${path.join(state, 'admin.sqlite')}?mode=rwc`,
    ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
    ADMIN_TOKEN: adminToken,
    EDGE_URL: gatewayUrl,
    EDGE_ADMIN_SECRET: secret,
    RUST_LOG: 'warn',
    ...adminEnv,
  });
  const admin = launchAdmin();

  const stack = {
    state, gatewayUrl, adminUrl, adminToken, mockUrl, mock, worker, admin, keys: {}, secret, replicas: [],
    /**
     * Headers signing an internal request as the admin does
     * (edgeway_core::internal_auth): HMAC over scheme, method, path, query,
     * timestamp, nonce and body digest, plus the legacy signature.
     */
    signInternal(method, route, text = '', { timestamp = Math.floor(Date.now() / 1000), nonce = randomBytes(16).toString('hex') } = {}) {
      const url = new URL(route, gatewayUrl);
      const bodyHash = createHash('sha256').update(text).digest('hex');
      const message = ['EDGEWAY-HMAC-SHA256-2', method.toUpperCase(), url.pathname, url.search.replace(/^\?/, ''), timestamp, nonce, bodyHash].join('\n');
      const legacy = createHmac('sha256', secret).update(`${method.toUpperCase()}\n${url.pathname}\n${timestamp}\n${bodyHash}`).digest('hex');
      return {
        'x-edgeway-timestamp': String(timestamp),
        'x-edgeway-nonce': nonce,
        'x-edgeway-signature-v2': createHmac('sha256', secret).update(message).digest('hex'),
        'x-edgeway-signature': legacy,
      };
    },
    /** A raw internal request with the given headers; the response as { status, json }. */
    async internalFetch(method, route, { text, headers = {} } = {}) {
      const r = await fetch(`${gatewayUrl}${route}`, { method, headers: { 'content-type': 'application/json', ...headers }, body: text });
      return { status: r.status, json: await r.json().catch(() => null) };
    },
    /** Signed call to the worker's internal API, as the admin makes it. */
    async internal(method, route, body) {
      const text = body === undefined ? '' : JSON.stringify(body);
      const r = await stack.internalFetch(method, route, { text: body === undefined ? undefined : text, headers: stack.signInternal(method, route, text) });
      if (r.status < 200 || r.status > 299) throw new Error(`internal ${method} ${route} → ${r.status}: ${JSON.stringify(r.json)}`);
      return r.json;
    },
    /** Runs the worker's cron handler once (`wrangler dev --test-scheduled`). */
    async scheduled() {
      const r = await fetch(`${gatewayUrl}/__scheduled?cron=${encodeURIComponent('*/5 * * * *')}`);
      if (!r.ok) throw new Error(`/__scheduled → ${r.status}: ${await r.text()}`);
    },
    /**
     * Starts a second worker process (another isolate) running the same
     * build on the same local KV, D1 and Durable Objects: its bindings name
     * this stack's worker (`script_name`), reached through the stack's dev
     * registry. Resolves to { url, stop }.
     */
    async startReplica() {
      const port = await freePort();
      const config = path.join(state, 'replica.wrangler.toml');
      const objects = [['KEY_ACCOUNT', 'KeyAccount'], ['INTERNAL_GUARD', 'InternalGuard'], ['CONVERSATION_STORE', 'ConversationStore'],
        ['USER_ACCOUNT', 'UserAccount'], ['CHANNEL_HEALTH', 'ChannelHealth']];
      writeFileSync(config, [
        'name = "edgeway-replica"',
        `main = ${JSON.stringify(path.join(ROOT, 'edge/worker/build/entry.mjs'))}`,
        'compatibility_date = "2025-09-01"',
        'compatibility_flags = ["enable_request_signal"]',
        '[[kv_namespaces]]', 'binding = "EDGEWAY_KV"', 'id = "edgeway-kv-local"',
        ...objects.flatMap(([name, cls]) => ['[[durable_objects.bindings]]', `name = "${name}"`, `class_name = "${cls}"`, 'script_name = "edgeway"']),
        '[[d1_databases]]', 'binding = "USAGE_DB"', 'database_name = "edgeway-usage"', 'database_id = "00000000-0000-0000-0000-000000000000"',
        '[[queues.producers]]', 'binding = "USAGE_QUEUE"', 'queue = "edgeway-usage"',
      ].join('\n'));
      const proc = start('wrangler-replica', 'wrangler', [
        'dev', '--config', config, '--ip', '127.0.0.1', '--port', String(port), '--inspector-port', String(await freePort()),
        '--persist-to', state, '--log-level', 'warn', '--show-interactive-dev-session=false', ...workerVars,
      ], wranglerEnv);
      const url = `http://127.0.0.1:${port}`;
      await waitFor(`${url}/health`, 90_000, proc, 'replica wrangler dev');
      stack.replicas.push(proc);
      return { url, proc, stop: () => stopProc(proc) };
    },
    /** Stops the admin service (its database stays). */
    async stopAdmin() {
      const proc = stack.admin;
      if (proc.exitCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      stopProc(proc);
      await exited;
    },
    /** Starts the admin service again on the same port and database. */
    async startAdmin() {
      stack.admin = launchAdmin();
      await waitFor(`${adminUrl}/health`, 30_000, stack.admin, 'admin');
    },
    async adminApi(method, route, body) {
      const r = await fetch(`${adminUrl}${route}`, {
        method,
        headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await r.text();
      let json = null;
      try { json = JSON.parse(text); } catch {}
      if (!r.ok) throw new Error(`admin ${method} ${route} → ${r.status}: ${text}`);
      return json;
    },
    async mockStats() { return (await fetch(`${mockUrl}/__stats`)).json(); },
    /** Waits until the worker lists `model` (a routing push has reached it). */
    async waitForModel(model, timeoutMs = 20_000) {
      const started = Date.now();
      while (Date.now() - started < timeoutMs) {
        const r = await fetch(`${gatewayUrl}/v1/models`, { headers: { authorization: `Bearer ${stack.keys.main}` } });
        if ((await r.json()).data?.some((m) => m.id === model)) return;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      throw new Error(`the worker did not list ${model} after ${timeoutMs} ms`);
    },
    async mockLast() { return (await fetch(`${mockUrl}/__last`)).json(); },
    logs() { return worker.logs.join('') + stack.admin.logs.join(''); },
    async stop() {
      stopProc(worker);
      stack.replicas.forEach(stopProc);
      stopProc(stack.admin);
      await new Promise((r) => mock.server.close(r));
      mock.server.closeAllConnections?.();
      if (!process.env.KEEP_E2E_STATE) rmSync(state, { recursive: true, force: true });
    },
  };
  try {
    await waitFor(`${gatewayUrl}/health`, 90_000, worker, 'wrangler dev');
    await waitFor(`${adminUrl}/health`, 30_000, admin, 'admin');
    const upstreamModels = ['gpt-test', 'paced-100', 'fail-500', 'fail-429', 'fail-400', 'fail-401-echo', 'hang', 'cut-stream', 'no-usage', 'zero-usage'];
    const price = { input: 1_000_000, output: 2_000_000 };
    await stack.adminApi('POST', '/api/channels', {
      id: 'mock-upstream',
      provider: 'openai-compatible',
      base_url: `${mockUrl}/v1`,
      api_key: CANARY_PROVIDER_KEY,
      timeout_ms: upstreamTimeoutMs,
      models: upstreamModels.map((m) => ({ name: m === 'gpt-test' ? 'gpt-test' : `up-${m}`, upstream_model: m, price })),
    });
    await stack.adminApi('POST', '/api/channels', {
      id: 'builtin-mock', provider: 'mock', models: [{ name: 'mock-1', price }],
    });
    stack.keys.main = (await stack.adminApi('POST', '/api/keys', { name: 'e2e main' })).key;
    stack.keys.restricted = (await stack.adminApi('POST', '/api/keys', { name: 'e2e restricted', allowed_models: ['mock-1'] })).key;
  } catch (e) {
    await stack.stop();
    throw e;
  }
  return stack;
}
