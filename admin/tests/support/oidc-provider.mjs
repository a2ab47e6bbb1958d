// A real OpenID Provider (npm `oidc-provider`) for the admin's OIDC tests:
//   node oidc-provider.mjs <port> <redirect_uri> <client_id> <client_secret>
// Any login name is accepted at its development login form; the account's
// claims are derived from it: sub = the login, email = <login>@example.com
// (verified unless the login starts with "unverified").
// Prints "ready" on stdout once listening on 127.0.0.1:<port>.
import Provider from 'oidc-provider';

const [port, redirectUri, clientId, clientSecret] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: `${id}@example.com`,
          email_verified: !id.startsWith('unverified'),
          preferred_username: id,
        };
      },
    };
  },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['preferred_username'] },
  pkce: { required: () => true },
  cookies: { keys: ['edgeway-oidc-test-cookie-key'] },
  features: { devInteractions: { enabled: true } },
});
// Quiet the development warnings on stderr; errors still show.
provider.on('server_error', (ctx, err) => console.error('server_error', err));

provider.listen(Number(port), '127.0.0.1', () => {
  console.log('ready');
});
