// Diagnostic floor: the null JS relay plus one per-key Durable Object admission
// before the upstream call and a release in waitUntil afterwards, with the same
// storage work as edgeway's KeyAccount (put a lease + set an alarm; delete it +
// clear the alarm). edgeway's added latency minus this one's is what edgeway's
// own code costs beyond the platform round trips its design makes.
import { DurableObject } from 'cloudflare:workers';

export class Lease extends DurableObject {
  async fetch(request) {
    const { pathname } = new URL(request.url);
    const { id } = await request.json();
    const storage = this.ctx.storage;
    if (pathname === '/admit') {
      const expires = Date.now() + 600_000;
      await storage.put(`lease:${id}`, expires);
      await storage.setAlarm(expires);
    } else {
      await storage.delete(`lease:${id}`);
      await storage.deleteAlarm();
    }
    return Response.json({ ok: true });
  }

  async alarm() {}
}

export default {
  async fetch(request, env, ctx) {
    const lease = env.LEASE.get(env.LEASE.idFromName('bench-key'));
    const id = crypto.randomUUID();
    const admit = await lease.fetch('https://lease/admit', { method: 'POST', body: JSON.stringify({ id }) });
    await admit.arrayBuffer();
    const url = new URL(request.url);
    const upstream = await fetch(env.UPSTREAM_URL.replace(/\/$/, '') + url.pathname, {
      method: request.method,
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-bench' },
      body: request.method === 'POST' ? request.body : undefined,
    });
    ctx.waitUntil(lease.fetch('https://lease/release', { method: 'POST', body: JSON.stringify({ id }) }).then((r) => r.arrayBuffer()));
    const headers = new Headers();
    const contentType = upstream.headers.get('content-type');
    if (contentType) headers.set('content-type', contentType);
    return new Response(upstream.body, { status: upstream.status, headers });
  },
};
