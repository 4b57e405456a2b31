// A Keycloak stand-in for the tests: oidc-provider with Keycloak's URL layout and JWT access tokens.
//
//   node tests/oidc/keycloak-standin.mjs [--port 0] [--host 127.0.0.1] [--realm thinkube]
//   (or KEYCLOAK_STANDIN_PORT / KEYCLOAK_STANDIN_HOST / KEYCLOAK_STANDIN_REALM)
//
// Port 0 picks a free port. Once listening it prints one line:
//   ready {"issuer": "...", "other_issuer": "...", "audience": "...", "clients": {...}}
//
// Two realms are served: <realm> and "other". They sign with the SAME keys, so a token of the other
// realm carries a valid signature but the wrong `iss`: it tests the issuer check, not the key lookup.
//
// Clients (secret = "<client_id>-secret"), all with client_credentials:
//   dagster     realm role image-writer                   (the pipeline)
//   ci-writer   client role image-writer in resource_access.thinkube-control
//   viewer      realm role image-reader only              (no writer role: 403)
//   short-lived realm role image-writer, access tokens live 1 s (expiry tests)
//   jupyterhub  authorization_code for the hub's login (users from the dev login form)
import { generateKeyPairSync } from 'node:crypto';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Koa from 'koa';
import mount from 'koa-mount';
import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.KEYCLOAK_STANDIN_PORT ?? '0' },
    host: { type: 'string', default: process.env.KEYCLOAK_STANDIN_HOST ?? '127.0.0.1' },
    realm: { type: 'string', default: process.env.KEYCLOAK_STANDIN_REALM ?? 'thinkube' },
    'hub-redirect': { type: 'string', default: 'http://127.0.0.1:8000/hub/oauth_callback' },
  },
});

const AUDIENCE = 'urn:thinkube:catalog'; // resource indicators must be absolute URIs
const WRITER_ROLE = 'image-writer';
const SCOPE = 'openid profile email groups';

const ROLES = {
  dagster: { realm_access: { roles: [WRITER_ROLE, 'offline_access'] } },
  'ci-writer': {
    realm_access: { roles: ['offline_access'] },
    resource_access: { 'thinkube-control': { roles: [WRITER_ROLE] } },
  },
  viewer: { realm_access: { roles: ['image-reader'] } },
  'short-lived': { realm_access: { roles: [WRITER_ROLE] } },
};
const TTL = { 'short-lived': 1 };

const machineClient = (id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: SCOPE,
});

const clients = [
  ...Object.keys(ROLES).map(machineClient),
  {
    client_id: 'jupyterhub',
    client_secret: 'jupyterhub-secret',
    redirect_uris: [args['hub-redirect']],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    scope: SCOPE,
  },
];

// One RSA signing key shared by both realms (see above).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'standin-rs256', use: 'sig', alg: 'RS256' };

function realmProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: clients.map((client) => ({ ...client })),
    jwks: { keys: [jwk] },
    routes: {
      authorization: '/protocol/openid-connect/auth',
      token: '/protocol/openid-connect/token',
      userinfo: '/protocol/openid-connect/userinfo',
      jwks: '/protocol/openid-connect/certs',
      end_session: '/protocol/openid-connect/logout',
      introspection: '/protocol/openid-connect/token/introspect',
    },
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => AUDIENCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource, client) => ({
          scope: SCOPE,
          audience: AUDIENCE,
          accessTokenFormat: 'jwt',
          accessTokenTTL: TTL[client.clientId] ?? 600,
        }),
      },
    },
    scopes: ['openid', 'profile', 'email', 'groups'],
    claims: { profile: ['preferred_username', 'name'], email: ['email'], groups: ['groups'] },
    findAccount: async (ctx, id) => ({
      accountId: id,
      claims: async () => ({
        sub: id,
        preferred_username: id,
        email: `${id}@example.org`,
        groups: ['jupyter-users'],
      }),
    }),
    extraTokenClaims: async (ctx, token) => ({
      azp: token.clientId,
      ...(ROLES[token.clientId] ?? { realm_access: { roles: [] } }),
    }),
    cookies: { keys: ['standin-cookie-key'] },
  });
  provider.proxy = true;
  return provider;
}

const server = http.createServer();
server.listen(Number(args.port), args.host, () => {
  const { port } = server.address();
  const base = `http://${args.host}:${port}/realms`;
  const issuer = `${base}/${args.realm}`;
  const otherIssuer = `${base}/other`;

  const app = new Koa();
  app.keys = ['standin-cookie-key']; // without app.keys the login interaction loses its cookie
  app.use(mount(`/realms/${args.realm}`, realmProvider(issuer)));
  app.use(mount('/realms/other', realmProvider(otherIssuer)));
  server.on('request', app.callback());

  const summary = {
    issuer,
    other_issuer: otherIssuer,
    audience: AUDIENCE,
    writer_role: WRITER_ROLE,
    clients: Object.fromEntries(clients.map((client) => [client.client_id, client.client_secret])),
  };
  console.log(`ready ${JSON.stringify(summary)}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
