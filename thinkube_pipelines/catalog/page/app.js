// The catalog's page: lists the images (open reads), signs in through Keycloak for Rebuild
// (authorization code + PKCE, in the browser: the catalog keeps no session and no secret), starts a
// rebuild and follows its log over the catalog's WebSocket. No framework, no build step.
'use strict';

const TOKEN_KEY = 'thinkube-catalog.token';
const LOGIN_KEY = 'thinkube-catalog.login';
const STATUS_WORDS = {
  SUCCESS: 'Succeeded',
  FAILURE: 'Failed',
  CANCELED: 'Canceled',
  CANCELING: 'Canceling',
  STARTED: 'Running',
  STARTING: 'Starting',
  QUEUED: 'Queued',
  NOT_STARTED: 'Not started',
};
const FINAL = new Set(['SUCCESS', 'FAILURE', 'CANCELED']);

const $ = (id) => document.getElementById(id);
let uiConfig = null;
let oidc = null; // the realm's discovery document, fetched on first sign-in
let logSocket = null;
let followed = null; // the build the log panel shows

// --- messages ---------------------------------------------------------------------------------------

function notice(text, kind = 'error') {
  const box = $('notice');
  box.textContent = text;
  box.className = kind === 'info' ? 'notice info' : 'notice';
  box.hidden = !text;
}

function detailOf(body) {
  if (!body) return '';
  if (typeof body.detail === 'string') return body.detail;
  if (Array.isArray(body.detail)) return body.detail.map((e) => `${(e.loc || []).join('.')}: ${e.msg}`).join('; ');
  return '';
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

// --- the images -------------------------------------------------------------------------------------

function shortDigest(digest) {
  return digest ? `${digest.slice(0, digest.indexOf(':') + 13)}` : 'none';
}

function relativeTime(date) {
  const seconds = (date.getTime() - Date.now()) / 1000;
  const units = [['year', 31536000], ['month', 2592000], ['day', 86400], ['hour', 3600], ['minute', 60]];
  const format = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size) return format.format(Math.round(seconds / size), unit);
  }
  return format.format(Math.round(seconds), 'second');
}

function card(item) {
  const node = $('image-card').content.firstElementChild.cloneNode(true);
  node.dataset.image = item.name;
  node.querySelector('.display-name').textContent = item.display_name;
  node.querySelector('.description').textContent = item.description || '';
  node.querySelector('.name').textContent = item.name;
  const metadata = item.metadata || {};
  node.querySelector('.gpu').hidden = !metadata.gpu_required;
  node.querySelector('.default').hidden = !item.default;
  node.querySelector('.inactive').hidden = item.is_active !== false;
  const built = node.querySelector('.built');
  if (item.last_built) {
    const date = new Date(item.last_built);
    const time = document.createElement('time');
    time.dateTime = item.last_built;
    time.title = item.last_built;
    time.textContent = `${date.toLocaleString()} (${relativeTime(date)})`;
    built.append(time);
  } else {
    built.textContent = 'never';
  }
  const digest = node.querySelector('.digest');
  digest.textContent = shortDigest(metadata.digest);
  if (metadata.digest) digest.title = metadata.digest;
  const button = node.querySelector('.rebuild');
  button.setAttribute('aria-label', `Rebuild ${item.display_name}`);
  button.addEventListener('click', () => rebuild(item, button));
  return node;
}

function fill(kind, items) {
  const list = $(`list-${kind}`);
  $(`count-${kind}`).textContent = `(${items.length})`;
  list.replaceChildren(...items.map(card));
  if (!items.length) {
    const empty = document.createElement('li');
    empty.className = 'empty';
    empty.textContent = kind === 'jupyter' ? 'No Jupyter images in the catalog yet.' : 'No other images in the catalog.';
    list.append(empty);
  }
}

async function loadImages() {
  let response;
  try {
    response = await fetch('api/v1/images', { headers: { Accept: 'application/json' }, cache: 'no-cache' });
  } catch (error) {
    notice(`The catalog could not be reached: ${error.message}`);
    return;
  }
  $('loading').hidden = true;
  if (!response.ok) {
    notice(`The catalog could not be read (HTTP ${response.status}): ${detailOf(await readJson(response))}`);
    return;
  }
  const items = await response.json();
  fill('jupyter', items.filter((item) => item.category === 'jupyter'));
  fill('other', items.filter((item) => item.category !== 'jupyter'));
}

// --- tabs (WAI-ARIA tabs: arrows, Home and End move between them) -----------------------------------

function selectTab(tab, focus = false) {
  for (const other of document.querySelectorAll('[role="tab"]')) {
    const selected = other === tab;
    other.setAttribute('aria-selected', String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute('aria-controls')).hidden = !selected;
  }
  if (focus) tab.focus();
}

function setUpTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener('click', () => selectTab(tab));
    tab.addEventListener('keydown', (event) => {
      const index = tabs.indexOf(tab);
      const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      selectTab(tabs[(next + tabs.length) % tabs.length], true);
    });
  }
  if (location.hash === '#other') selectTab($('tab-other'));
}

// --- sign-in: authorization code + PKCE (RFC 7636) against the realm's public client ----------------

function base64url(bytes) {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function randomString() {
  return base64url(crypto.getRandomValues(new Uint8Array(32)));
}

function redirectUri() {
  return `${location.origin}${location.pathname}`;
}

function claimsOf(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

function currentToken() {
  const stored = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || 'null');
  if (!stored || stored.expires_at <= Date.now()) return null;
  return stored;
}

async function discovery() {
  if (oidc) return oidc;
  const response = await fetch(`${uiConfig.issuer}/.well-known/openid-configuration`);
  if (!response.ok) throw new Error(`the realm ${uiConfig.issuer} answered HTTP ${response.status}`);
  const document_ = await response.json();
  if (document_.issuer !== uiConfig.issuer) throw new Error(`the realm names another issuer: ${document_.issuer}`);
  oidc = document_;
  return oidc;
}

async function signIn() {
  try {
    const realm = await discovery();
    const verifier = randomString();
    const state = randomString();
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
    sessionStorage.setItem(LOGIN_KEY, JSON.stringify({ verifier, state }));
    const url = new URL(realm.authorization_endpoint);
    url.search = new URLSearchParams({
      response_type: 'code',
      client_id: uiConfig.client_id,
      redirect_uri: redirectUri(),
      scope: uiConfig.scopes.join(' '),
      state,
      code_challenge: base64url(new Uint8Array(digest)),
      code_challenge_method: 'S256',
    }).toString();
    location.assign(url.toString());
  } catch (error) {
    notice(`Sign-in could not start: ${error.message}`);
  }
}

async function finishSignIn(params) {
  // The realm sent the browser back here with ?code&state (or ?error): take them out of the address.
  history.replaceState(null, '', location.pathname + location.hash);
  const login = JSON.parse(sessionStorage.getItem(LOGIN_KEY) || 'null');
  sessionStorage.removeItem(LOGIN_KEY);
  if (params.get('error')) {
    notice(`Sign-in failed: ${params.get('error_description') || params.get('error')}`);
    return;
  }
  if (!login || login.state !== params.get('state')) {
    notice('Sign-in failed: the answer does not belong to a sign-in started here (state mismatch). Try again.');
    return;
  }
  try {
    const realm = await discovery();
    const response = await fetch(realm.token_endpoint, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'authorization_code',
        code: params.get('code'),
        redirect_uri: redirectUri(),
        client_id: uiConfig.client_id,
        code_verifier: login.verifier,
      }),
    });
    const body = await readJson(response);
    if (!response.ok || !body?.access_token) {
      notice(`Sign-in failed: ${body?.error_description || body?.error || `HTTP ${response.status}`}`);
      return;
    }
    const claims = claimsOf(body.access_token);
    sessionStorage.setItem(
      TOKEN_KEY,
      JSON.stringify({
        access_token: body.access_token,
        expires_at: Date.now() + (body.expires_in || 300) * 1000,
        username: claims.preferred_username || claims.sub || 'unknown user',
      }),
    );
  } catch (error) {
    notice(`Sign-in failed: the realm could not be reached (${error.message})`);
  }
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  showAccount();
}

function showAccount() {
  const token = currentToken();
  const configured = Boolean(uiConfig?.issuer);
  $('account-name').textContent = token ? `Signed in as ${token.username}` : configured ? '' : 'Sign-in is not configured';
  $('sign-in').hidden = Boolean(token) || !configured;
  $('sign-out').hidden = !token;
}

// --- rebuild and its live log -----------------------------------------------------------------------

async function refusal(response, item, token) {
  const detail = detailOf(await readJson(response));
  switch (response.status) {
    case 401:
      sessionStorage.removeItem(TOKEN_KEY);
      showAccount();
      return `Your sign-in was not accepted (${detail || 'expired or not valid'}): sign in again to rebuild.`;
    case 403:
      return `Signed in as ${token.username}, you may not rebuild images: ${detail || 'permission denied'}.`;
    case 404:
      return `${item.display_name} cannot be rebuilt: ${detail || 'no such image'}.`;
    case 503:
      return `Rebuilds are unavailable right now: ${detail || 'the build service is not reachable'}.`;
    default:
      return `The rebuild of ${item.display_name} was refused (HTTP ${response.status}): ${detail}`;
  }
}

async function rebuild(item, button) {
  const token = currentToken();
  if (!token) {
    if (!uiConfig?.issuer) {
      notice('Rebuilding needs sign-in, and this catalog has no sign-in configured (THINKUBE_OIDC_ISSUER).');
    } else {
      notice('Sign in to rebuild images: reading the catalog is open, rebuilding is not.', 'info');
      $('sign-in').focus();
    }
    return;
  }
  notice('');
  button.disabled = true;
  try {
    const response = await fetch(`api/v1/images/${encodeURIComponent(item.name)}/rebuild`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token.access_token}`, Accept: 'application/json' },
    });
    if (response.status !== 202) {
      notice(await refusal(response, item, token));
      return;
    }
    follow(item, await response.json());
  } catch (error) {
    notice(`The catalog could not be reached: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

function setStatus(status, words) {
  const node = $('build-status');
  node.dataset.status = status;
  node.textContent = words || STATUS_WORDS[status] || status;
  node.className = status === 'SUCCESS' ? 'status-success' : FINAL.has(status) ? 'status-failure' : '';
}

function formatTime(time) {
  if (time === undefined || time === null) return '';
  const date = typeof time === 'number' ? new Date(time < 1e12 ? time * 1000 : time) : new Date(time);
  return Number.isNaN(date.getTime()) ? String(time) : date.toLocaleTimeString([], { hour12: false });
}

function appendLine(message) {
  const log = $('build-log');
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
  const prefix = [formatTime(message.time), message.step ? `[${message.step}]` : ''].filter(Boolean).join(' ');
  log.append(`${prefix ? `${prefix} ` : ''}${message.text}\n`);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

async function pollStatus(build) {
  // The log stream ended early: the run's status is still worth knowing.
  try {
    const response = await fetch(new URL(build.status_url, location.href), { cache: 'no-cache' });
    if (response.ok) {
      const body = await response.json();
      setStatus(body.status);
      if (!FINAL.has(body.status) && followed === build) setTimeout(() => pollStatus(build), 2000);
    }
  } catch {
    /* the notice already says the stream was lost */
  }
}

function follow(item, build) {
  if (logSocket) logSocket.close(1000);
  followed = build;
  // the address names the build, so a reload (or a shared link) shows its log again
  history.replaceState(null, '', `${location.pathname}#build=${encodeURIComponent(build.run_id)}`);
  $('build').hidden = false;
  $('build-title').textContent = item
    ? `Build of ${item.display_name}: run ${build.run_id}`
    : `Build: run ${build.run_id}`;
  $('build-log').textContent = '';
  setStatus('QUEUED', 'Started, waiting for the log…');
  const link = $('build-dagster');
  link.hidden = !build.dagster_url;
  if (build.dagster_url) link.href = build.dagster_url;
  $('build').scrollIntoView({ block: 'nearest' });

  const url = new URL(build.logs_url, location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(url);
  logSocket = socket;
  let ended = false;
  socket.addEventListener('message', (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === 'line') {
      if (!ended && $('build-status').dataset.status === 'QUEUED') setStatus('STARTED');
      appendLine(message);
    } else if (message.type === 'end') {
      ended = true;
      setStatus(message.status);
      loadImages(); // a successful build may have a new digest
    }
  });
  socket.addEventListener('close', (event) => {
    if (socket !== logSocket || ended) return;
    if (event.code === 4404) {
      setStatus('UNKNOWN', 'Unknown run');
      notice(`The build log is not available: Dagster does not know run ${build.run_id}.`);
    } else if (event.code === 4503) {
      notice(`The build log is not available: Dagster cannot be reached (${event.reason || 'no reason given'}).`);
      pollStatus(build);
    } else {
      const reason = event.reason ? `: ${event.reason}` : '';
      notice(`The build log stream closed before the build ended (code ${event.code}${reason}).`);
      pollStatus(build);
    }
  });
}

// --- start ------------------------------------------------------------------------------------------

async function start() {
  setUpTabs();
  $('sign-in').addEventListener('click', signIn);
  $('sign-out').addEventListener('click', signOut);
  try {
    const response = await fetch('api/v1/ui-config');
    uiConfig = response.ok ? await response.json() : null;
  } catch {
    uiConfig = null;
  }
  const params = new URLSearchParams(location.search);
  if (uiConfig?.issuer && (params.has('code') || params.has('error'))) await finishSignIn(params);
  showAccount();
  await loadImages();
  const shown = /^#build=([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (shown) {
    const runId = shown[1];
    follow(null, { run_id: runId, status_url: `api/v1/builds/${runId}`, logs_url: `api/v1/builds/${runId}/logs` });
  }
}

start();
