// The ACME view (issue 17): ACME accounts (GET /api/v1/acme/accounts, deactivate) and EAB
// keys (GET/POST /api/v1/acme/eab, DELETE to revoke an unused one). A new key's HMAC is in
// the create answer only: it is shown once, in a read-only field with a copy button, and
// never again. State changes carry the session's CSRF header (api.js).
import { all, call } from './api.js';
import { cell, el, may, problem, table, when } from './views.js';

function eabPanel(kid, hmac) {
  const field = el('input', { id: 'eab-hmac', type: 'text', readonly: true, value: hmac,
    class: 'mono wide-input', spellcheck: 'false', 'aria-describedby': 'eab-once' });
  const copied = el('span', { role: 'status', id: 'eab-copied' });
  const copy = el('button', { type: 'button', text: 'Copy HMAC key', on: { click: async () => {
    field.select();
    try {
      await navigator.clipboard.writeText(hmac);
      copied.textContent = 'Copied.';
    } catch (_) {  // no clipboard permission (plain HTTP, a policy): the text is selected
      copied.textContent = 'Selected: press Ctrl+C to copy.';
    }
  } } });
  const heading = el('h3', { id: 'eab-new-title', tabindex: '-1', text: `New EAB key ${kid}` });
  const panel = el('section', { class: 'panel', 'aria-labelledby': 'eab-new-title' }, heading,
    el('p', { id: 'eab-once', class: 'help',
      text: 'The HMAC key is shown this once: the gateway keeps no readable copy. Give it to the ACME client '
        + '(certbot --eab-kid KID --eab-hmac-key KEY; lego --eab --kid KID --hmac KEY).' }),
    el('dl', { class: 'detail' }, el('dt', { text: 'Key id (kid)' }), el('dd', { class: 'mono', id: 'eab-kid', text: kid })),
    el('div', { class: 'actions' },
      el('div', {}, el('label', { for: 'eab-hmac', text: 'HMAC key (base64url)' }), field), copy, copied));
  return [panel, heading];
}

export async function acme(section, who) {
  section.append(el('h2', { text: 'ACME accounts and EAB keys' }));
  if (!may(who, 'token:create')) {
    section.append(el('p', { class: 'help', text: 'ACME accounts and EAB keys need the token:create permission (an administrator\'s).' }));
    return;
  }
  const message = el('p', { role: 'status', id: 'acme-message' });
  const created = el('div', { id: 'eab-created' });
  const organization = el('input', { id: 'eab-org', type: 'text', required: true,
    value: who.organization_id || 'default', spellcheck: 'false' });
  const form = el('form', { class: 'actions', 'aria-label': 'Create an EAB key' },
    el('div', {}, el('label', { for: 'eab-org', text: 'Organization (slug or id)' }), organization),
    el('button', { type: 'submit', text: 'Create EAB key' }));
  const keys = el('div', { id: 'eab-keys' });
  const accounts = el('div', { id: 'acme-accounts' });
  section.append(el('h3', { text: 'External account binding keys' }), form, message, created, keys,
    el('h3', { text: 'Accounts' }), accounts);

  const loadKeys = async () => {
    try {
      const items = await all('/api/v1/acme/eab?limit=100');
      keys.replaceChildren(table(`${items.length} EAB key(s)`,
        [['Key id'], ['Organization', 'wide-only'], ['Created'], ['Used by account'], ['Action']],
        items.map((k) => el('tr', {}, cell(k.kid, 'mono'), cell(k.organization_id, 'wide-only'),
          cell(when(k.created_at)), cell(k.account_id, 'mono'),
          el('td', {}, k.used ? el('span', { class: 'help', text: 'bound (cannot be revoked)' })
            : el('button', { type: 'button', class: 'danger', 'aria-label': `Revoke EAB key ${k.kid}`,
              text: 'Revoke', on: { click: () => revokeKey(k.kid) } }))))));
    } catch (error) { problem(keys, error); }
  };
  const loadAccounts = async () => {
    try {
      const items = await all('/api/v1/acme/accounts?limit=100');
      accounts.replaceChildren(table(`${items.length} ACME account(s)`,
        [['Account'], ['Organization', 'wide-only'], ['Status'], ['Contact'], ['EAB key', 'wide-only'],
          ['Created', 'wide-only'], ['Action']],
        items.map((a) => el('tr', {}, cell(a.id, 'mono'), cell(a.organization_id, 'wide-only'),
          el('td', { class: `status-${a.status}`, text: a.status }),
          cell(a.contact.length ? a.contact.join(', ') : null), cell(a.eab_kid, 'mono wide-only'),
          cell(when(a.created_at), 'wide-only'),
          el('td', {}, a.status === 'valid'
            ? el('button', { type: 'button', class: 'danger', 'aria-label': `Deactivate account ${a.id}`,
              text: 'Deactivate', on: { click: () => deactivate(a.id) } })
            : el('span', { class: 'help', text: '—' }))))));
    } catch (error) { problem(accounts, error); }
  };
  const say = (text, ok) => {
    message.className = ok ? 'ok' : 'error';
    message.textContent = text;
  };
  const revokeKey = async (kid) => {
    try {
      await call('DELETE', `/api/v1/acme/eab/${encodeURIComponent(kid)}`);
      if (document.getElementById('eab-kid')?.textContent === kid) created.replaceChildren();
      say(`EAB key ${kid} revoked.`, true);
      await loadKeys();
    } catch (error) { say(`Not revoked: ${error.message}`, false); }
  };
  const deactivate = async (id) => {
    try {
      await call('POST', `/api/v1/acme/accounts/${encodeURIComponent(id)}/deactivate`);
      say(`Account ${id} deactivated.`, true);
      await loadAccounts();
    } catch (error) { say(`Not deactivated: ${error.message}`, false); }
  };
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const key = await call('POST', '/api/v1/acme/eab', { organization: organization.value.trim() });
      const [panel, heading] = eabPanel(key.kid, key.hmac_key);
      created.replaceChildren(panel);
      say('', true);
      heading.focus();
      await loadKeys();
    } catch (error) { say(`No key created: ${error.message}`, false); }
  });
  await Promise.all([loadKeys(), loadAccounts()]);
}
