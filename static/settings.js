// Settings page of the Pixee PIM appliance: log in, pick a tenant, manage API keys and webhooks.
//
// Security notes: the access token lives only in the `accessToken` variable below (never in
// localStorage or sessionStorage); a reload restores the session through the HttpOnly refresh
// cookie. A refresh token may be presented only once (a second use a few seconds later revokes
// the whole session), so every caller shares one in-flight refresh promise. All text from the server is
// inserted with textContent, never as HTML. The page runs under a strict CSP: no inline code
// or styles, visibility is toggled with the `hidden` attribute.
'use strict';

(() => {
  const API = '/api/v1';
  const SCOPES = [
    ['products:read', 'read products and catalog data'],
    ['products:write', 'create and update products'],
    ['products:delete', 'delete products, bulk delete'],
    ['categories:read', 'read the category tree and mappings'],
    ['suppliers:read', 'read supplier catalog data'],
    ['imports:read', 'view import jobs and logs'],
    ['imports:write', 'start and manage imports'],
    ['exports:read', 'view export jobs'],
    ['exports:write', 'create and download exports'],
    ['ext:products:read', 'External API (/api/v1/ext): status, product list, product by EAN'],
    ['ext:products:write', 'External API (/api/v1/ext): create, replace, patch and batch products by EAN'],
    ['windev:read', 'WinDev (/api/v1/windev): products, change feed, categories, suppliers'],
    ['windev:write', 'WinDev (/api/v1/windev): edit, activate products; stock and price updates'],
    ['windev:sync', 'WinDev (/api/v1/windev): sync products by reference'],
  ];

  const EVENTS = [
    ['product.created', 'a product was created'],
    ['product.updated', 'a product was changed'],
    ['product.deleted', 'a product was deleted'],
    ['supplier.created', 'a supplier was created'],
    ['supplier.updated', 'a supplier was changed'],
    ['import.started', 'an import started'],
    ['import.completed', 'an import finished'],
    ['import.failed', 'an import failed'],
    ['test', 'sent by the Send test button'],
  ];

  let accessToken = null;
  let shownDeliveries = null; // the webhook whose deliveries are listed
  let tenantId = null; // null: the server picks the user's default tenant
  let currentTenant = null; // the tenant shown on the page
  let tenantNames = new Map(); // id -> name of the tenants the user belongs to
  let refreshPromise = null;

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // ---- messages ----

  function showError(err) {
    const msg = err instanceof Error ? err.message : String(err);
    $('error').textContent = msg || 'Something went wrong.';
    $('error').hidden = false;
    $('notice').hidden = true;
    if (!(err instanceof ApiError)) console.error(err);
  }

  function showNotice(msg) {
    $('notice').textContent = msg;
    $('notice').hidden = false;
  }

  function clearMessages() {
    $('error').hidden = true;
    $('error').textContent = '';
    $('notice').hidden = true;
  }

  // ---- HTTP ----

  async function send(path, init) {
    try {
      return await fetch(API + path, { credentials: 'same-origin', cache: 'no-store', ...init });
    } catch (e) {
      throw new ApiError(0, `Could not reach the server (${e.message}). Check your connection and try again.`);
    }
  }

  // Turns a problem+json response into an ApiError whose message is meant for people.
  async function problem(res) {
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON: fall back to the status */ }
    let msg = (body && (body.detail || body.title)) || `The server answered ${res.status} ${res.statusText}.`;
    if (body && Array.isArray(body.errors)) {
      // Add the per-field messages that the detail does not already say.
      const extra = body.errors.map((e) => (e.field ? `${e.field}: ${e.message}` : e.message)).filter((m) => !msg.includes(m));
      if (extra.length) msg += ` ${extra.join('; ')}`;
    }
    const retry = Number(res.headers.get('Retry-After'));
    if ((res.status === 423 || res.status === 429) && retry > 0) {
      msg += ` Try again in ${retry < 90 ? `${retry} seconds` : `${Math.ceil(retry / 60)} minutes`}.`;
    }
    return new ApiError(res.status, msg);
  }

  function takeToken(body) {
    if (!body || typeof body.access_token !== 'string') throw new ApiError(0, 'The server sent no access token.');
    accessToken = body.access_token;
  }

  // Other tabs of this page share the refresh cookie: a Web Lock (where the browser offers
  // it, i.e. in secure contexts) keeps them from presenting the same token at once.
  function withRefreshLock(fn) {
    return navigator.locks ? navigator.locks.request('pixee-pim-refresh', fn) : fn();
  }

  // One refresh at a time: concurrent callers share the same promise. Resolves true when a
  // new access token was obtained, false when the server refused (no or dead session).
  function refresh() {
    if (!refreshPromise) {
      refreshPromise = withRefreshLock(async () => {
        const post = () => send('/auth/refresh', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
          body: '{}',
        });
        let res = await post();
        // 409: another tab (without Web Locks) spent the same cookie a moment ago; the browser
        // now holds that tab's new cookie, so one more try succeeds.
        if (res.status === 409) res = await post();
        if (res.status === 401 || res.status === 403) { accessToken = null; return false; }
        if (!res.ok) throw await problem(res);
        takeToken(await res.json());
        return true;
      }).finally(() => { refreshPromise = null; });
    }
    return refreshPromise;
  }

  async function api(method, path, body, retried = false) {
    const headers = { Accept: 'application/json' };
    const used = accessToken;
    if (used) headers.Authorization = `Bearer ${used}`;
    if (tenantId) headers['X-Tenant-ID'] = tenantId;
    const init = { method, headers };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await send(path, init);
    if (res.status === 401 && !retried) {
      // Another call may have refreshed meanwhile; otherwise refresh once, then retry once.
      if ((accessToken && accessToken !== used) || await refresh()) return api(method, path, body, true);
      showLogin();
      throw new ApiError(401, 'Your session has ended. Please log in again.');
    }
    if (!res.ok) throw await problem(res);
    return res.status === 204 ? null : res.json();
  }

  // ---- formatting ----

  // Compact local time, "2027-01-15 08:16"; the exact UTC instant is in the tooltip.
  function formatTime(d) {
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function timeCell(td, iso, empty) {
    if (!iso) { td.textContent = empty; td.classList.add('muted'); return; }
    const d = new Date(iso);
    const t = document.createElement('time');
    t.dateTime = iso;
    t.title = iso;
    t.textContent = Number.isNaN(d.getTime()) ? iso : formatTime(d);
    td.append(t);
  }

  function keyStatus(k) {
    if (k.revoked_at) return 'revoked';
    if (k.expires_at && new Date(k.expires_at) <= new Date()) return 'expired';
    return 'active';
  }

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---- views ----

  function showLogin() {
    accessToken = null;
    tenantId = null;
    $('loading').hidden = true;
    $('app-section').hidden = true;
    $('session-bar').hidden = true;
    $('login-section').hidden = false;
    hideNewKey();
    hideSecret();
    hideDeliveries();
    $('keys-body').replaceChildren();
    $('webhooks-body').replaceChildren();
    $('login-password').value = '';
    $('login-email').focus();
  }

  // Who am I, in which tenant, and which tenants can I switch to.
  async function loadSession() {
    const [me, tenants] = await Promise.all([api('GET', '/auth/me'), api('GET', '/tenants?per_page=100')]);
    const who = me.user ? me.user.email : (me.key ? me.key.name : 'unknown');
    $('whoami').textContent = `${who} · ${me.role || 'member'} of ${me.tenant.name}`;
    const select = $('tenant-select');
    select.replaceChildren(...tenants.items.map((t) => {
      const o = new Option(`${t.name}${t.role ? ` (${t.role})` : ''}`, t.id);
      o.selected = t.id === me.tenant.id;
      return o;
    }));
    if (!tenants.items.some((t) => t.id === me.tenant.id)) select.prepend(new Option(me.tenant.name, me.tenant.id, true, true));
    currentTenant = me.tenant.id;
    tenantNames = new Map(tenants.items.map((t) => [t.id, t.name]));
    tenantNames.set(me.tenant.id, me.tenant.name);
    showTenantPicker(tenants.items.filter((t) => t.id !== me.tenant.id && t.role === 'admin'));
    $('keys-title').textContent = `API keys of ${me.tenant.name}`;
    $('loading').hidden = true;
    $('login-section').hidden = true;
    $('session-bar').hidden = false;
    $('app-section').hidden = false;
  }

  // The other tenants a new key may also work in: those the user administers.
  function showTenantPicker(others) {
    $('tenant-list').replaceChildren(...others.map((t) => {
      const label = el('label', 'scope-option');
      const box = el('input');
      box.type = 'checkbox';
      box.name = 'tenant';
      box.value = t.id;
      label.append(box, ` ${t.name}`);
      return label;
    }));
    $('tenant-picker').hidden = others.length === 0;
  }

  function tenantName(id) {
    return tenantNames.get(id) || id;
  }

  async function showApp() {
    await loadSession();
    await loadKeys();
    await loadWebhooks();
  }

  async function loadKeys() {
    const body = $('keys-body');
    let list;
    try {
      list = await api('GET', '/api-keys?per_page=100');
    } catch (e) {
      body.replaceChildren(emptyRow('Keys could not be loaded.'));
      throw e;
    }
    const keys = list.items.slice().sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    const rows = keys.length ? keys.map(keyRow) : [emptyRow('No API keys yet. Create one below.')];
    if (list.total > keys.length) rows.push(emptyRow(`Showing ${keys.length} of ${list.total} keys.`));
    body.replaceChildren(...rows);
  }

  function emptyRow(text, columns = 9) {
    const tr = el('tr');
    const td = el('td', 'muted', text);
    td.colSpan = columns;
    tr.append(td);
    return tr;
  }

  // Appends a cell to the row; `content` is text or a node.
  function cell(tr, className, content) {
    const td = tr.appendChild(el('td', className));
    if (content !== undefined) td.append(content);
    return td;
  }

  function keyRow(k) {
    const tr = el('tr');
    tr.dataset.keyId = k.id;
    const status = keyStatus(k);
    if (status !== 'active') tr.className = 'inactive';

    const nameCell = cell(tr, 'key-name-cell');
    nameCell.append(el('span', 'key-name', k.name));
    const home = k.home_tenant_id || currentTenant;
    const others = (k.tenant_ids || []).filter((t) => t !== currentTenant);
    const reach = [];
    if (home !== currentTenant) reach.push(`from ${tenantName(home)}`);
    if (others.length) reach.push(`also in ${others.map(tenantName).join(', ')}`);
    if (reach.length) nameCell.append(el('div', 'hint key-tenants', reach.join('; ')));
    cell(tr, null, el('span', `badge env-${k.environment}`, k.environment));
    const scopes = cell(tr, 'scopes');
    for (const s of k.scopes) scopes.append(el('span', 'scope', s), ' ');
    cell(tr, null, el('code', 'hint-code', k.hint));
    timeCell(cell(tr, 'key-created'), k.created_at, '—');
    const used = cell(tr, 'key-used');
    timeCell(used, k.last_used_at, 'Never');
    if (k.last_used_ip) used.append(el('span', 'hint from-ip', `from ${k.last_used_ip}`));
    timeCell(cell(tr, 'key-expires'), k.expires_at, 'Never');
    cell(tr, null, el('span', `key-status status-${status}`, status));

    const actions = el('td', 'actions');
    if (!k.revoked_at && home !== currentTenant) {
      // Another tenant's key that also works here: this tenant can only take itself out of it.
      const withdraw = el('button', 'button danger small withdraw-button', 'Withdraw');
      withdraw.type = 'button';
      withdraw.setAttribute('aria-label', `Withdraw this tenant from ${k.name}`);
      withdraw.addEventListener('click', () => withdrawKey(k, withdraw));
      actions.append(withdraw);
    } else if (!k.revoked_at) {
      const rotate = el('button', 'button secondary small rotate-button', 'Rotate');
      rotate.type = 'button';
      rotate.addEventListener('click', () => rotateKey(k, rotate));
      const revoke = el('button', 'button danger small revoke-button', 'Revoke');
      revoke.type = 'button';
      revoke.addEventListener('click', () => revokeKey(k, revoke));
      rotate.setAttribute('aria-label', `Rotate ${k.name}`);
      revoke.setAttribute('aria-label', `Revoke ${k.name}`);
      actions.append(rotate, revoke);
    }
    tr.append(actions);
    return tr;
  }

  function showNewKey(record) {
    $('new-key-name').textContent = record.name;
    $('new-key-value').textContent = record.key;
    $('copy-status').textContent = '';
    $('new-key-panel').hidden = false;
    $('new-key-panel').scrollIntoView({ block: 'start' });
    $('new-key-panel').focus();
  }

  function hideNewKey() {
    $('new-key-panel').hidden = true;
    $('new-key-value').textContent = '';
    $('new-key-name').textContent = '';
  }

  // ---- webhooks ----

  async function loadWebhooks() {
    const body = $('webhooks-body');
    let list;
    try {
      list = await api('GET', '/webhooks?per_page=100');
    } catch (e) {
      body.replaceChildren(emptyRow('Webhooks could not be loaded.', 5));
      throw e;
    }
    const rows = list.items.length ? list.items.map(webhookRow) : [emptyRow('No webhooks yet. Add one below.', 5)];
    body.replaceChildren(...rows);
  }

  function webhookRow(w) {
    const tr = el('tr');
    tr.dataset.webhookId = w.id;
    if (!w.is_active) tr.className = 'inactive';
    const name = cell(tr, 'webhook-name-cell');
    name.append(el('span', 'webhook-name', w.name), el('div', 'hint webhook-url', w.url));
    cell(tr, null, el('span', `badge env-${w.environment}`, w.environment));
    const events = cell(tr, 'scopes');
    for (const e of w.events) events.append(el('span', 'scope', e), ' ');
    let status = w.is_active ? 'active' : 'off';
    if (!w.is_active && w.disabled_at) status = `off after ${w.failed_events} failed events`;
    cell(tr, null, el('span', `webhook-status status-${w.is_active ? 'active' : 'revoked'}`, status));
    const actions = el('td', 'actions');
    const button = (text, cls, label, onClick) => {
      const b = el('button', `button small ${cls}`, text);
      b.type = 'button';
      b.setAttribute('aria-label', `${label} ${w.name}`);
      b.addEventListener('click', () => onClick(w, b));
      actions.append(b);
    };
    button('Send test', 'secondary test-webhook-button', 'Send a test event to', testWebhook);
    button('Deliveries', 'secondary deliveries-button', 'Show the deliveries of', (hook, b) => run(b, () => showDeliveries(hook)));
    button(w.is_active ? 'Turn off' : 'Turn on', 'secondary toggle-webhook-button', w.is_active ? 'Turn off' : 'Turn on', toggleWebhook);
    button('Delete', 'danger delete-webhook-button', 'Delete', deleteWebhook);
    tr.append(actions);
    return tr;
  }

  function testWebhook(w, control) {
    run(control, async () => {
      const d = await api('POST', `/webhooks/${encodeURIComponent(w.id)}/test`, {});
      if (d.status === 'succeeded') showNotice(`The test event reached ${w.name}: it answered ${d.status_code}.`);
      else showError(new ApiError(0, `The test event did not reach ${w.name}: ${d.error || `it answered ${d.status_code}`}. It will be retried.`));
      if (shownDeliveries === w.id) await showDeliveries(w);
    });
  }

  function toggleWebhook(w, control) {
    run(control, async () => {
      await api('PATCH', `/webhooks/${encodeURIComponent(w.id)}`, { is_active: !w.is_active });
      await loadWebhooks();
      showNotice(`The webhook "${w.name}" is ${w.is_active ? 'off' : 'on'}.`);
    });
  }

  function deleteWebhook(w, control) {
    if (!window.confirm(`Delete the webhook "${w.name}"?\n\nIts pending deliveries are not sent.`)) return;
    run(control, async () => {
      await api('DELETE', `/webhooks/${encodeURIComponent(w.id)}`);
      if (shownDeliveries === w.id) hideDeliveries();
      await loadWebhooks();
      showNotice(`The webhook "${w.name}" was deleted.`);
    });
  }

  async function showDeliveries(w) {
    const list = await api('GET', `/webhooks/${encodeURIComponent(w.id)}/deliveries?per_page=50`);
    shownDeliveries = w.id;
    $('deliveries-title').textContent = `Deliveries to ${w.name}`;
    const rows = list.items.map((d) => deliveryRow(w, d));
    if (!rows.length) rows.push(emptyRow('Nothing sent yet.', 8));
    if (list.total > list.items.length) rows.push(emptyRow(`Showing the newest ${list.items.length} of ${list.total}.`, 8));
    $('deliveries-body').replaceChildren(...rows);
    $('deliveries-panel').hidden = false;
  }

  function deliveryRow(w, d) {
    const tr = el('tr');
    tr.dataset.deliveryId = d.id;
    cell(tr, null, el('code', null, d.event));
    cell(tr, null, el('span', `delivery-status status-${d.status === 'succeeded' ? 'active' : (d.status === 'failed' ? 'revoked' : 'expired')}`, d.status));
    cell(tr, 'delivery-attempts', String(d.attempt));
    cell(tr, 'delivery-code', d.status_code === null ? '—' : String(d.status_code));
    cell(tr, null, d.duration_ms === null ? '—' : `${d.duration_ms} ms`);
    cell(tr, 'delivery-error', d.error || '');
    timeCell(cell(tr, null), d.next_attempt_at, '—');
    const actions = el('td', 'actions');
    const again = el('button', 'button secondary small redeliver-button', 'Send again');
    again.type = 'button';
    again.addEventListener('click', () => run(again, async () => {
      await api('POST', `/webhooks/${encodeURIComponent(w.id)}/deliveries/${encodeURIComponent(d.id)}/redeliver`, {});
      showNotice('The delivery will be sent again in a moment.');
      await showDeliveries(w);
    }));
    actions.append(again);
    tr.append(actions);
    return tr;
  }

  function hideDeliveries() {
    shownDeliveries = null;
    $('deliveries-panel').hidden = true;
    $('deliveries-body').replaceChildren();
  }

  function showSecret(w) {
    $('new-secret-name').textContent = w.name;
    $('new-secret-value').textContent = w.secret;
    $('new-secret-panel').hidden = false;
    $('new-secret-panel').scrollIntoView({ block: 'start' });
    $('new-secret-panel').focus();
  }

  function hideSecret() {
    $('new-secret-panel').hidden = true;
    $('new-secret-value').textContent = '';
    $('new-secret-name').textContent = '';
  }

  function onCreateWebhook(ev) {
    ev.preventDefault();
    run($('create-webhook-submit'), async () => {
      const name = $('webhook-name').value.trim();
      const url = $('webhook-url').value.trim();
      const events = [...document.querySelectorAll('input[name=event]:checked')].map((c) => c.value);
      if (!name) throw new ApiError(0, 'Give the webhook a name.');
      if (!url) throw new ApiError(0, 'Enter the URL that receives the events.');
      if (!events.length) throw new ApiError(0, 'Choose at least one event.');
      const payload = {
        name,
        url,
        events,
        environment: $('webhook-env-test').checked ? 'test' : 'live',
        max_retries: Number($('webhook-retries').value),
        timeout_seconds: Number($('webhook-timeout').value),
      };
      const created = await api('POST', '/webhooks', payload);
      $('create-webhook-form').reset();
      showSecret(created);
      await loadWebhooks();
    });
  }

  function buildEventList() {
    $('event-list').replaceChildren(...EVENTS.map(([event, text]) => {
      const label = el('label', 'scope-option');
      const box = el('input');
      box.type = 'checkbox';
      box.name = 'event';
      box.value = event;
      label.append(box, el('code', null, event), el('span', 'hint', text));
      return label;
    }));
  }

  // ---- actions ----

  // Runs a user action: clears old messages, disables the control while it runs, shows errors.
  async function run(control, action) {
    clearMessages();
    if (control) control.disabled = true;
    try {
      await action();
    } catch (e) {
      showError(e);
    } finally {
      if (control) control.disabled = false;
    }
  }

  function rotateKey(k, button) {
    if (!window.confirm(`Rotate the key "${k.name}"?\n\nThe current key stops working immediately; you will get a new one.`)) return;
    run(button, async () => {
      const rotated = await api('POST', `/api-keys/${encodeURIComponent(k.id)}/rotate`, {});
      showNewKey(rotated);
      await loadKeys();
    });
  }

  function revokeKey(k, button) {
    if (!window.confirm(`Revoke the key "${k.name}"?\n\nIntegrations using it stop working immediately. This cannot be undone.`)) return;
    run(button, async () => {
      await api('DELETE', `/api-keys/${encodeURIComponent(k.id)}`);
      await loadKeys();
      showNotice(`The key "${k.name}" was revoked.`);
    });
  }

  function withdrawKey(k, button) {
    const here = tenantName(currentTenant);
    if (!window.confirm(`Stop the key "${k.name}" from working in ${here}?\n\nIts requests for ${here} are refused from now on; the key keeps working in its own tenant.`)) return;
    run(button, async () => {
      await api('DELETE', `/api-keys/${encodeURIComponent(k.id)}/tenants/${encodeURIComponent(currentTenant)}`);
      await loadKeys();
      showNotice(`The key "${k.name}" no longer works in ${here}.`);
    });
  }

  function expiryFromDate(value) {
    // <input type=date> gives YYYY-MM-DD; the key lives until the end of that day, UTC.
    return value ? `${value}T23:59:59Z` : undefined;
  }

  function onCreate(ev) {
    ev.preventDefault();
    run($('create-key-submit'), async () => {
      const name = $('key-name').value.trim();
      const scopes = [...document.querySelectorAll('input[name=scope]:checked')].map((c) => c.value);
      if (!name) throw new ApiError(0, 'Give the key a name, so you can tell it apart later.');
      if (!scopes.length) throw new ApiError(0, 'Choose at least one scope.');
      const payload = { name, scopes, environment: $('env-test').checked ? 'test' : 'live' };
      const expiresAt = expiryFromDate($('key-expiry').value);
      if (expiresAt) payload.expires_at = expiresAt;
      const tenantIds = [...document.querySelectorAll('input[name=tenant]:checked')].map((c) => c.value);
      if (tenantIds.length) payload.tenant_ids = tenantIds;
      const created = await api('POST', '/api-keys', payload);
      $('create-key-form').reset();
      showNewKey(created);
      await loadKeys();
    });
  }

  function onLogin(ev) {
    ev.preventDefault();
    run($('login-submit'), async () => {
      const email = $('login-email').value.trim();
      const password = $('login-password').value;
      if (!email || !password) throw new ApiError(0, 'Enter your email and password.');
      const res = await send('/auth/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ email, password }),
      });
      if (!res.ok) {
        $('login-password').value = '';
        throw await problem(res);
      }
      takeToken(await res.json());
      $('login-password').value = '';
      tenantId = null; // a new session starts in the user's default tenant
      await showApp();
    });
  }

  function onLogout() {
    run($('logout-button'), async () => {
      try {
        if (accessToken) await api('POST', '/auth/logout');
      } catch (e) {
        if (e.status !== 401) throw e; // the session is already over: nothing left to end
      }
      showLogin();
      showNotice('You are logged out.');
    });
  }

  function onTenantChange() {
    const select = $('tenant-select');
    run(select, async () => {
      const previous = tenantId;
      tenantId = select.value;
      hideNewKey();
      hideSecret();
      hideDeliveries();
      $('keys-body').replaceChildren();
      $('webhooks-body').replaceChildren();
      try {
        await loadSession();
      } catch (e) {
        // Stay in the tenant we were in; the error says why the switch failed.
        tenantId = previous;
        select.value = currentTenant;
        throw e;
      }
      await loadKeys();
      await loadWebhooks();
    });
  }

  async function copyKey() {
    const value = $('new-key-value');
    try {
      await navigator.clipboard.writeText(value.textContent);
      $('copy-status').textContent = 'Copied to the clipboard.';
    } catch (_) {
      // No clipboard access (permission, insecure context): select the key for a manual copy.
      const range = document.createRange();
      range.selectNodeContents(value);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      $('copy-status').textContent = 'The key is selected: press Ctrl+C (⌘C on a Mac) to copy it.';
    }
  }

  // ---- start ----

  function buildScopeList() {
    $('scope-list').replaceChildren(...SCOPES.map(([scope, text]) => {
      const label = el('label', 'scope-option');
      const box = el('input');
      box.type = 'checkbox';
      box.name = 'scope';
      box.value = scope;
      label.append(box, el('code', null, scope), el('span', 'hint', text));
      return label;
    }));
  }

  function limitExpiryInput() {
    const day = 24 * 3600 * 1000;
    const iso = (t) => new Date(t).toISOString().slice(0, 10);
    $('key-expiry').min = iso(Date.now());
    $('key-expiry').max = iso(Date.now() + 365 * day); // the server allows at most 366 days
  }

  async function start() {
    buildScopeList();
    buildEventList();
    limitExpiryInput();
    $('login-form').addEventListener('submit', onLogin);
    $('create-key-form').addEventListener('submit', onCreate);
    $('logout-button').addEventListener('click', onLogout);
    $('tenant-select').addEventListener('change', onTenantChange);
    $('copy-key-button').addEventListener('click', copyKey);
    $('dismiss-key-button').addEventListener('click', hideNewKey);
    $('create-webhook-form').addEventListener('submit', onCreateWebhook);
    $('dismiss-secret-button').addEventListener('click', hideSecret);
    $('close-deliveries-button').addEventListener('click', hideDeliveries);
    $('refresh-deliveries-button').addEventListener('click', (ev) => {
      const hook = shownDeliveries;
      run(ev.currentTarget, async () => {
        const list = await api('GET', '/webhooks?per_page=100');
        const w = list.items.find((x) => x.id === hook);
        if (w) await showDeliveries(w); else hideDeliveries();
      });
    });
    try {
      if (await refresh()) {
        await showApp();
        return;
      }
    } catch (e) {
      if (!$('app-section').hidden) { showError(e); return; }
      showLogin();
      showError(e);
      return;
    }
    showLogin();
  }

  start();
})();
