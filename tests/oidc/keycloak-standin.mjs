// A Keycloak stand-in for the tests: oidc-provider with Keycloak's URL layout and JWT access tokens.
//
//   node tests/oidc/keycloak-standin.mjs [--port 0] [--host 127.0.0.1] [--realm thinkube]
//        [--hub-redirect URI] [--catalog-ui-redirect URI ...]
//   (or KEYCLOAK_STANDIN_PORT / KEYCLOAK_STANDIN_HOST / KEYCLOAK_STANDIN_REALM)
//
// Port 0 picks a free port. Once listening it prints one line:
//   ready {"issuer": "...", "other_issuer": "...", "lying_issuer": "...", "keys_unreachable_issuer": "...",
//          "mint_url": "...", "audience": "...", "writer_role": "...", "custom_writer_role": "...",
//          "rebuilder_role": "...", "catalog_ui_client": "...", "clients": {...confidential ones' secrets}}
//
// Realms (all sign with the SAME key, the one private JWK the providers are configured with):
//   <realm>   the realm under test (oidc-provider)
//   other     another realm (oidc-provider): a token of it carries a valid signature but the wrong `iss`,
//             so it tests the issuer check, not the key lookup
//   lying     only a discovery document, which names <realm>'s issuer instead of its own
//   keyless   only a discovery document, naming itself, whose jwks_uri points to a closed port
//
// Access tokens of <realm> and other carry `aud` = the catalog's client id, "thinkube-control" (as a Keycloak
// audience mapper would), JWT header `typ: at+jwt`, and Keycloak's `realm_access` / `resource_access` roles.
//
// Clients (secret = "<client_id>-secret"), all with client_credentials:
//   dagster        realm role image-writer                                   (the pipeline)
//   ci-writer      client role image-writer of the catalog's own client: resource_access.thinkube-control
//   foreign-role   client role image-writer of ANOTHER client: resource_access.gitea (must not write: 403)
//   viewer         realm role image-reader only                              (no writer role: 403)
//   custom-writer  realm role some-custom-role                               (THINKUBE_CATALOG_WRITER_ROLE tests)
//   short-lived    realm role image-writer, access tokens live 1 s            (expiry tests)
//   jupyterhub     authorization_code for the hub's login (users from the dev login form); its redirect URI
//                  is --hub-redirect. Its access tokens are for the userinfo endpoint (no resource
//                  indicator), which the hub asks for the user's claims, as it does Keycloak's.
//   thinkube-catalog-ui  PUBLIC client (no secret, token_endpoint_auth_method none): the catalog's web page
//                  signs users in with authorization_code + PKCE (S256, required) from the browser; its
//                  redirect URIs are --catalog-ui-redirect (repeatable). Its access tokens carry
//                  aud thinkube-control and the signed-in user's realm roles (USER_ROLES), as a Keycloak
//                  public client with an audience mapper would; CORS is open to its redirect URIs' origins.
//
// Users of the dev login form (oidc-provider devInteractions: any login name signs in, any password; the
// consent page follows). Their `groups` claim (scope `groups`, like a Keycloak Group Membership mapper
// without full paths) is ACCOUNT_GROUPS[login], else DEFAULT_GROUPS:
//   hub-user     jupyterhub-users                     (may use the hub)
//   hub-admin    jupyterhub-users, jupyterhub-admins  (may use and administer the hub)
//   outsider     other-team                           (outside the hub's groups: refused)
//   image-admin  jupyterhub-users; realm role image-rebuilder (may press Rebuild on the catalog's page)
// Realm roles of users (USER_ROLES[login], else none) go into the access tokens of thinkube-catalog-ui:
//   image-admin  image-rebuilder                      (hub-user and the others: no role, so Rebuild is 403)
//
// TEST ONLY: POST <mint_url> (http://host:port/test-only/mint) mints tokens no grant gives without a user
// (ID tokens, refresh tokens, tokens not yet valid, tokens of the lying and keyless realms). They are
// shaped like Keycloak's and signed with the realms' own signing key (the same private JWK), so they are
// real signed tokens of the realm. Body (JSON):
//   {"realm": "thinkube"|"other"|"lying"|"keyless", "kind": "access"|"id"|"refresh", "client": "dagster",
//    "claims": {...merged over the defaults; null removes a claim...},
//    "header": {...merged over {alg: "RS256", typ: "JWT", kid}...}}
// Answer: {"token": "..."}. Keycloak marks the kind in the `typ` CLAIM: access "Bearer", id "ID",
// refresh "Refresh"; its JWT header `typ` is plain "JWT". Nothing like this endpoint exists in Keycloak.
import { createServer as createTcpServer } from 'node:net';
import { createSign, generateKeyPairSync, randomUUID } from 'node:crypto';
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
    'catalog-ui-redirect': { type: 'string', multiple: true, default: ['http://127.0.0.1:8080/'] },
  },
});

const RESOURCE = 'urn:thinkube:catalog'; // the resource indicator (oidc-provider wants an absolute URI)
const AUDIENCE = 'thinkube-control'; // the catalog's client id: the tokens' `aud`, its resource_access key
const WRITER_ROLE = 'image-writer';
const CUSTOM_ROLE = 'some-custom-role';
const SCOPE = 'openid profile email groups';

const ROLES = {
  dagster: { realm_access: { roles: [WRITER_ROLE, 'offline_access'] } },
  'ci-writer': {
    realm_access: { roles: ['offline_access'] },
    resource_access: { [AUDIENCE]: { roles: [WRITER_ROLE] } },
  },
  'foreign-role': {
    realm_access: { roles: ['offline_access'] },
    resource_access: { gitea: { roles: [WRITER_ROLE] }, [AUDIENCE]: { roles: ['image-reader'] } },
  },
  viewer: { realm_access: { roles: ['image-reader'] } },
  'custom-writer': { realm_access: { roles: [CUSTOM_ROLE] } },
  'short-lived': { realm_access: { roles: [WRITER_ROLE] } },
};
const TTL = { 'short-lived': 1 };
const HUB_CLIENT = 'jupyterhub';
const CATALOG_UI_CLIENT = 'thinkube-catalog-ui';
const REBUILDER_ROLE = 'image-rebuilder';
const ACCOUNT_GROUPS = {
  'hub-user': ['jupyterhub-users'],
  'hub-admin': ['jupyterhub-users', 'jupyterhub-admins'],
  outsider: ['other-team'],
  'image-admin': ['jupyterhub-users'],
};
const USER_ROLES = { 'image-admin': [REBUILDER_ROLE] };
const DEFAULT_GROUPS = ['jupyter-users'];

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
    client_id: HUB_CLIENT,
    client_secret: `${HUB_CLIENT}-secret`,
    redirect_uris: [args['hub-redirect']],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    scope: SCOPE,
  },
  {
    client_id: CATALOG_UI_CLIENT,
    token_endpoint_auth_method: 'none', // public: PKCE is required (oidc-provider's default for these)
    redirect_uris: args['catalog-ui-redirect'],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    scope: SCOPE,
  },
];

// One RSA signing key shared by every realm (see above).
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
        // the hub's tokens are for userinfo (no resource), the machine clients' for the catalog
        defaultResource: (ctx, client) => (client?.clientId === HUB_CLIENT ? undefined : RESOURCE),
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
    // Keycloak gives a refresh token with every authorization-code login (no offline_access needed); this
    // also makes refresh_token a grant type the provider supports, which the hub's client lists.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    claims: { profile: ['preferred_username', 'name'], email: ['email'], groups: ['groups'] },
    findAccount: async (ctx, id) => ({
      accountId: id,
      claims: async () => ({
        sub: id,
        preferred_username: id,
        email: `${id}@example.org`,
        groups: ACCOUNT_GROUPS[id] ?? DEFAULT_GROUPS,
      }),
    }),
    extraTokenClaims: async (ctx, token) => {
      if (token.clientId === CATALOG_UI_CLIENT) {
        // a user's token: Keycloak's realm roles mapper puts the user's roles in it
        return {
          azp: token.clientId,
          preferred_username: token.accountId,
          realm_access: { roles: USER_ROLES[token.accountId] ?? [] },
        };
      }
      return { azp: token.clientId, ...(ROLES[token.clientId] ?? { realm_access: { roles: [] } }) };
    },
    cookies: { keys: ['standin-cookie-key'] },
  });
  provider.proxy = true;
  return provider;
}

// --- test only: Keycloak-shaped tokens signed with the realm key -------------------------------------

function signRs256(header, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${part(header)}.${part(claims)}`;
  const signature = createSign('RSA-SHA256').update(input).sign(privateKey).toString('base64url');
  return `${input}.${signature}`;
}

function keycloakClaims(kind, issuer, client) {
  const now = Math.floor(Date.now() / 1000);
  const common = {
    iat: now,
    jti: randomUUID(),
    iss: issuer,
    sub: `service-account-${client}`,
    azp: client,
    sid: randomUUID(),
    preferred_username: `service-account-${client}`,
  };
  const roles = ROLES[client] ?? { realm_access: { roles: [] } };
  switch (kind) {
    case 'access':
      return { exp: now + 300, ...common, aud: AUDIENCE, typ: 'Bearer', scope: 'openid profile email', ...roles };
    case 'id':
      return { exp: now + 300, ...common, auth_time: now, aud: client, typ: 'ID', ...roles };
    case 'refresh':
      return { exp: now + 1800, ...common, aud: issuer, typ: 'Refresh', scope: 'openid profile email' };
    default:
      return null;
  }
}

async function readJson(req) {
  let raw = '';
  req.setEncoding('utf8');
  for await (const chunk of req) raw += chunk;
  return raw ? JSON.parse(raw) : {};
}

function closedPort(host) {
  // A port that was free a moment ago and is closed again: connecting to it is refused.
  return new Promise((resolve, reject) => {
    const probe = createTcpServer();
    probe.on('error', reject);
    probe.listen(0, host, () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

function discoveryOnly(issuer, jwksUri) {
  return {
    issuer,
    jwks_uri: jwksUri,
    authorization_endpoint: `${issuer}/protocol/openid-connect/auth`,
    token_endpoint: `${issuer}/protocol/openid-connect/token`,
    id_token_signing_alg_values_supported: ['RS256'],
    response_types_supported: ['code'],
    subject_types_supported: ['public'],
  };
}

const server = http.createServer();
server.listen(Number(args.port), args.host, async () => {
  const { port } = server.address();
  const origin = `http://${args.host}:${port}`;
  const base = `${origin}/realms`;
  const issuer = `${base}/${args.realm}`;
  const issuers = {
    [args.realm]: issuer,
    other: `${base}/other`,
    lying: `${base}/lying`,
    keyless: `${base}/keyless`,
  };
  const closed = await closedPort(args.host);
  const discoveries = {
    // Claims to be the realm under test: THINKUBE_OIDC_ISSUER=<lying> must not trust it.
    [`/realms/lying/.well-known/openid-configuration`]: discoveryOnly(
      issuer,
      `${issuer}/protocol/openid-connect/certs`,
    ),
    [`/realms/keyless/.well-known/openid-configuration`]: discoveryOnly(
      issuers.keyless,
      `http://${args.host}:${closed}/realms/keyless/protocol/openid-connect/certs`,
    ),
  };

  const app = new Koa();
  app.keys = ['standin-cookie-key']; // without app.keys the login interaction loses its cookie
  app.use(async (ctx, next) => {
    if (ctx.method === 'GET' && discoveries[ctx.path]) {
      ctx.body = discoveries[ctx.path];
      return;
    }
    if (ctx.path === '/test-only/mint') {
      if (ctx.method !== 'POST') ctx.throw(405, 'POST a JSON body');
      let body;
      try {
        body = await readJson(ctx.req);
      } catch {
        ctx.throw(400, 'the body is not JSON');
      }
      const realm = body.realm ?? args.realm;
      const client = body.client ?? 'dagster';
      if (!issuers[realm]) ctx.throw(400, `unknown realm ${realm}`);
      const claims = keycloakClaims(body.kind ?? 'access', issuers[realm], client);
      if (!claims) ctx.throw(400, 'kind must be access, id or refresh');
      const header = { alg: 'RS256', typ: 'JWT', kid: jwk.kid, ...(body.header ?? {}) };
      const merged = { ...claims, ...(body.claims ?? {}) };
      for (const [name, value] of Object.entries(merged)) if (value === null) delete merged[name];
      ctx.body = { token: signRs256(header, merged) };
      return;
    }
    await next();
  });
  app.use(mount(`/realms/${args.realm}`, realmProvider(issuer)));
  app.use(mount('/realms/other', realmProvider(issuers.other)));
  server.on('request', app.callback());

  const summary = {
    issuer,
    other_issuer: issuers.other,
    lying_issuer: issuers.lying,
    keys_unreachable_issuer: issuers.keyless,
    mint_url: `${origin}/test-only/mint`,
    audience: AUDIENCE,
    writer_role: WRITER_ROLE,
    custom_writer_role: CUSTOM_ROLE,
    rebuilder_role: REBUILDER_ROLE,
    catalog_ui_client: CATALOG_UI_CLIENT,
    clients: Object.fromEntries(
      clients.filter((client) => client.client_secret).map((client) => [client.client_id, client.client_secret]),
    ),
  };
  console.log(`ready ${JSON.stringify(summary)}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
