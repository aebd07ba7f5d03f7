// A throwaway OpenID Connect provider for Portcullis tests (panva's oidc-provider).
// Started by `OidcProvider::start` in ../src/oidc.rs:  node provider.mjs PORT
// Listens on 127.0.0.1:PORT only, prints "ready <issuer>" once listening, exits when its
// stdin closes (so it never outlives the test process). Routes under /__test/ are
// test-only helpers; see the Rust docs for what each does.
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const TTL = 600;
// Keep in sync with `ACCOUNTS` in ../src/oidc.rs (the Rust test checks the claims).
const ACCOUNTS = {
  alice: { name: 'Alice Analyst', email: 'alice@example.com', groups: ['analysts'] },
  dana: { name: 'Dana DBA', email: 'dana@example.com', groups: ['dba'] },
  bob: { name: 'Bob Nogroups', email: 'bob@example.com', groups: [] },
};
const RESOURCE = 'urn:portcullis'; // default resource indicator -> audience "portcullis"
const SERVICE_GROUPS = ['reporting'];
const DEVICE_SCOPE = 'openid profile email groups';

// ---- keys ------------------------------------------------------------------------------
const generation = { RS256: 0, ES256: 0 };
const suffix = crypto.randomBytes(3).toString('hex');
function makeKey(alg) {
  generation[alg] += 1;
  const { privateKey } = alg === 'RS256'
    ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
    : crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const kid = `${alg === 'RS256' ? 'rsa' : 'ec'}-${generation[alg]}-${suffix}`;
  return {
    alg, kid,
    pem: privateKey.export({ type: 'pkcs8', format: 'pem' }),
    jwk: { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' },
  };
}
let keys = [makeKey('RS256'), makeKey('ES256')]; // signing key per alg = first of that alg

// ---- provider configuration -------------------------------------------------------------
const claimsOf = (id) => {
  const a = ACCOUNTS[id];
  return {
    sub: id, jti: crypto.randomUUID(), name: a.name, email: a.email, email_verified: true,
    groups: a.groups, realm_access: { roles: a.groups },
  };
};

function configuration() {
  return {
    jwks: { keys: keys.map((k) => k.jwk) },
    clients: [
      {
        client_id: 'portcullis-cli', token_endpoint_auth_method: 'none',
        grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
        response_types: [], redirect_uris: [],
      },
      {
        client_id: 'svc-reporting', client_secret: 'svc-reporting-secret',
        grant_types: ['client_credentials'], response_types: [], redirect_uris: [],
      },
    ],
    claims: {
      openid: ['sub', 'jti'], profile: ['name'], email: ['email', 'email_verified'],
      groups: ['groups', 'realm_access'],
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    conformIdTokenClaims: false, // scope claims go into the ID token itself
    async findAccount(ctx, id) {
      if (!ACCOUNTS[id]) return undefined;
      return { accountId: id, claims: async () => claimsOf(id) };
    },
    async extraTokenClaims(ctx, token) {
      if (token.kind === 'ClientCredentials') {
        return { groups: SERVICE_GROUPS, realm_access: { roles: SERVICE_GROUPS } };
      }
      return undefined;
    },
    cookies: { keys: ['portcullis-testkit-oidc-cookie-key'] },
    ttl: {
      AccessToken: TTL, ClientCredentials: TTL, IdToken: TTL, DeviceCode: TTL,
      Interaction: TTL, Session: 3600, Grant: 3600, RefreshToken: 3600,
    },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: {
        enabled: true,
        successSource: async (ctx) => { ctx.body = '<p id="device-flow-success">Sign-in Success</p>'; },
      },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // A client-credentials request without `resource` gets RESOURCE; other grants none.
        defaultResource: async (ctx, client, oneOf) => oneOf
          ?? (ctx.oidc.params?.grant_type === 'client_credentials' ? RESOURCE : undefined),
        getResourceServerInfo: async (ctx, indicator) => {
          if (indicator !== RESOURCE) throw new Provider.errors.InvalidTarget();
          return {
            audience: 'portcullis', scope: 'reporting', accessTokenTTL: TTL,
            accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    renderError: async (ctx, out, error) => {
      ctx.type = 'text';
      ctx.body = `oidc error: ${out.error}: ${out.error_description} (${error?.message ?? ''})`;
    },
  };
}

let provider;
let handler;
function swapProvider() {
  provider = new Provider(issuer, configuration());
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  handler = provider.callback();
}
swapProvider();
let jwksFetches = 0;

// ---- interactions: log in the account named by the test cookie and grant everything ------
const cookieValue = (req, name) => (req.headers.cookie ?? '').split(/;\s*/)
  .map((c) => c.split('=')).find(([k]) => k === name)?.[1];

async function finishInteraction(req, res) {
  const p = provider;
  const details = await p.interactionDetails(req, res);
  const accountId = details.session?.accountId
    ?? decodeURIComponent(cookieValue(req, '__test_account') ?? 'alice');
  if (!ACCOUNTS[accountId]) {
    return p.interactionFinished(req, res, { error: 'access_denied', error_description: `unknown account ${accountId}` });
  }
  const { params } = details;
  const grant = details.grantId ? await p.Grant.find(details.grantId)
    : new p.Grant({ accountId, clientId: params.client_id });
  grant.addOIDCScope(params.scope ?? DEVICE_SCOPE);
  const missing = details.prompt.details ?? {};
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  return p.interactionFinished(req, res, { login: { accountId }, consent: { grantId } }, { mergeWithLastSubmission: false });
}

// ---- /__test/approve-device: the user's browser, with a tiny cookie jar --------------------
async function approveDevice(userCode, account) {
  if (!ACCOUNTS[account]) throw new Error(`unknown account ${JSON.stringify(account)}`);
  if (userCode.startsWith('http')) userCode = new URL(userCode).searchParams.get('user_code') ?? '';
  const jar = new Map([['__test_account', encodeURIComponent(account)]]);
  let url = `${issuer}/device?user_code=${encodeURIComponent(userCode)}`;
  let init = { method: 'GET' };
  for (let step = 0; step < 12; step += 1) {
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    const res = await fetch(url, { ...init, redirect: 'manual', headers: { ...init.headers, cookie } });
    for (const c of res.headers.getSetCookie()) {
      const [kv] = c.split(';');
      const i = kv.indexOf('=');
      jar.set(kv.slice(0, i), kv.slice(i + 1));
    }
    const body = await res.text();
    if (res.status >= 300 && res.status < 400) {
      url = new URL(res.headers.get('location'), url).href;
      init = { method: 'GET' };
    } else if (res.status !== 200) {
      throw new Error(`${init.method} ${url}: HTTP ${res.status}: ${body}`);
    } else if (body.includes('device-flow-success')) {
      const code = await provider.DeviceCode.findByUserCode(userCode.replace(/[^A-Za-z0-9]/g, '').toUpperCase());
      if (code?.accountId !== account) throw new Error(`device code not bound to ${account}`);
      return;
    } else {
      const form = body.match(/<form[^>]*action="([^"]*)"[^>]*>([\s\S]*?)<\/form>/);
      if (!form || /name="user_code" placeholder/.test(body)) {
        throw new Error(`user code ${userCode} rejected: ${body.match(/<p class="red">([^<]*)/)?.[1] ?? body}`);
      }
      const fields = new URLSearchParams();
      for (const [, name, value] of form[2].matchAll(/<input type="hidden" name="([^"]*)" value="([^"]*)"/g)) {
        fields.set(name, value.replace(/&#(\d+);/g, (_, n) => String.fromCharCode(n)).replace(/&amp;/g, '&'));
      }
      url = new URL(form[1], url).href;
      init = { method: 'POST', body: fields.toString(), headers: { 'content-type': 'application/x-www-form-urlencoded' } };
    }
  }
  throw new Error('device approval did not finish');
}

// ---- test-only routes -------------------------------------------------------------------
async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString());
}

async function testRoute(req, res, url) {
  const reply = (status, text) => { res.writeHead(status, { 'content-type': 'text/plain' }); res.end(text); };
  const route = `${req.method} ${url.pathname}`;
  if (route === 'GET /__test/jwks-fetches') return reply(200, String(jwksFetches));
  if (route === 'GET /__test/signing-key') {
    const key = keys.find((k) => k.alg === url.searchParams.get('alg'));
    return key ? reply(200, `${key.kid}\n${key.pem}`) : reply(404, 'no key for that alg');
  }
  if (route === 'POST /__test/rotate') {
    const fresh = makeKey('RS256');
    keys = [fresh, ...(url.searchParams.get('drop_old') === '1' ? keys.filter((k) => k.alg !== 'RS256') : keys)];
    swapProvider();
    return reply(200, fresh.kid);
  }
  if (route === 'POST /__test/approve-device') {
    const form = await readBody(req);
    try {
      await approveDevice(form.get('user_code') ?? '', form.get('account') ?? '');
      return reply(200, 'approved');
    } catch (err) {
      return reply(400, String(err?.message ?? err));
    }
  }
  return reply(404, 'unknown test route');
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, issuer);
  if (url.pathname === '/jwks') jwksFetches += 1;
  let work;
  if (url.pathname.startsWith('/__test/')) work = testRoute(req, res, url);
  else if (url.pathname.startsWith('/interaction/')) work = finishInteraction(req, res);
  else return handler(req, res);
  return work.catch((err) => {
    console.error(err);
    if (!res.headersSent) { res.writeHead(500, { 'content-type': 'text/plain' }); }
    res.end(String(err?.message ?? err));
  });
});
server.on('error', (err) => { console.error(`listen failed: ${err.code ?? ''} ${err.message}`); process.exit(3); });
server.listen(port, '127.0.0.1', () => console.log(`ready ${issuer}`));

process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.resume();
