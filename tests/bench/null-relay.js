// The null JS relay: the smallest worker that forwards a request to the
// upstream and streams the answer back, with no gateway logic at all. It is
// the runtime's floor that scripts/bench measures edgeway against.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const upstream = await fetch(env.UPSTREAM_URL.replace(/\/$/, '') + url.pathname, {
      method: request.method,
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-bench' },
      body: request.method === 'POST' ? request.body : undefined,
    });
    const headers = new Headers();
    const contentType = upstream.headers.get('content-type');
    if (contentType) headers.set('content-type', contentType);
    return new Response(upstream.body, { status: upstream.status, headers });
  },
};
