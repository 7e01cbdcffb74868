// The enrollment view (issue 17): EST one-time secrets and SCEP one-time challenges
// (create: the password is shown once; list: never it; revoke an unused one) and the
// requests of both protocols waiting for an operator (approve, reject). It calls only the
// documented API (/api/v1/est/..., /api/v1/scep/...); api.js sends the CSRF header on every
// state change. Every value goes into the DOM as text, never as markup.
import { all, call } from './api.js';
import { el, table, when } from './views.js';

const cell = (value, cls) => el('td', { class: cls, text: value || '—' });

function field(label, id, control, help) {
  control.id = id;
  if (help) control.setAttribute('aria-describedby', `${id}-help`);
  return el('div', {}, el('label', { for: id, text: label }), control,
    help ? el('span', { id: `${id}-help`, class: 'help', text: help }) : null);
}

function say(target, text, ok = true) {
  target.className = ok ? 'ok' : 'error';
  target.textContent = text;
}

// One protocol's credentials: a creation form, the one-time password panel and the list.
function credentials(spec, who) {
  const { protocol, noun, path, fields, shown } = spec;
  const id = (name) => `${protocol}-${name}`;
  const organization = el('input', { type: 'text', name: 'organization', required: true,
    value: who.organization_id, spellcheck: 'false' });
  const lifetime = el('input', { type: 'number', name: 'expires_in_minutes', min: '1',
    value: String(spec.minutes) });
  const extra = fields.map(([name, label, help]) => [name, label, help,
    el('input', { type: 'text', name, spellcheck: 'false' })]);
  const form = el('form', { class: 'filters', 'aria-label': `Create ${noun}` },
    field('Organization (slug or id)', id('org'), organization),
    ...extra.map(([name, label, help, control]) => field(label, id(name), control, help)),
    field('Lifetime (minutes)', id('minutes'), lifetime),
    el('button', { type: 'submit', text: `Create ${noun}` }));
  const created = el('div', { id: id('created') });
  const message = el('p', { role: 'status', id: id('message') });
  const list = el('div', { id: id('list') });

  const load = async () => {
    try {
      const items = await all(`${path}?limit=200`, 5);
      list.replaceChildren(table(`${items.length} ${noun}(s), oldest first`,
        [['ID'], ...spec.columns.map(([label, , cls]) => [label, cls]), ['Expires'], ['Status'], ['Action']],
        items.map((item) => el('tr', {}, cell(item.id, 'mono'),
          ...spec.columns.map(([, key, cls]) => cell(item[key], cls)),
          cell(when(item.expires_at)), el('td', { class: `status-${item.status}`, text: item.status }),
          el('td', {}, item.status === 'unused' ? el('button', {
            type: 'button', class: 'danger', text: 'Revoke', 'aria-label': `Revoke ${noun} ${item.id}`,
            on: { click: () => revoke(item.id) },
          }) : null)))));
    } catch (error) { say(message, error.message, false); }
  };

  const revoke = async (ident) => {
    try {
      await call('DELETE', `${path}/${encodeURIComponent(ident)}`);
      if (created.dataset.shown === ident) created.replaceChildren();  // its password too
      say(message, `Revoked ${noun} ${ident}.`);
    } catch (error) { say(message, `Not revoked: ${error.message}`, false); }
    await load();
  };

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = { organization: organization.value.trim() };
    for (const [name, , , control] of extra) if (control.value.trim()) body[name] = control.value.trim();
    if (lifetime.value) body.expires_in_minutes = Number(lifetime.value);
    try {
      const made = await call('POST', path, body);
      const heading = el('h4', { id: id('created-title'), tabindex: '-1', text: `New ${noun} ${made.id}` });
      created.replaceChildren(el('section', { class: 'panel', 'aria-labelledby': id('created-title') },
        heading,
        el('p', { class: 'help', text: 'Shown only this once: copy it now. It is stored hashed and works for one enrollment.' }),
        el('dl', { class: 'detail' }, ...shown(made).flatMap(([k, v]) => [el('dt', { text: k }),
          el('dd', {}, el('code', { class: 'mono', text: v }))])),
        el('p', { class: 'help', text: spec.hint(made) }),
        el('button', { type: 'button', text: 'Hide it', on: { click: () => { created.replaceChildren(); form.querySelector('button').focus(); } } })));
      created.dataset.shown = made.id;
      say(message, `Created ${noun} ${made.id}.`);
      heading.focus();
    } catch (error) { say(message, `Not created: ${error.message}`, false); }
    await load();
  });
  return { nodes: [form, message, created, list], load };
}

// One protocol's approval queue.
function queue(spec) {
  const { protocol, path, label } = spec;
  const message = el('p', { role: 'status', id: `${protocol}-queue-message` });
  const list = el('div', { id: `${protocol}-pending` });
  const load = async () => {
    try {
      const items = await all(`${path}?limit=200`, 5);
      list.replaceChildren(table(`${items.length} ${label} request(s) waiting, oldest first`,
        [['Request'], [spec.scope[0]], ['Subject'], ['Requester', 'wide-only'], ['Received', 'wide-only'], ['Decision']],
        items.map((item) => el('tr', {}, cell(item.id, 'mono'), cell(item[spec.scope[1]]),
          cell(item.subject), cell(item.requester, 'wide-only'), cell(when(item.created_at), 'wide-only'),
          el('td', { class: 'actions' },
            el('button', { type: 'button', text: 'Approve', 'aria-label': `Approve ${label} request ${item.id}`,
              on: { click: () => decide(item.id, 'approve') } }),
            el('button', { type: 'button', class: 'danger', text: 'Reject', 'aria-label': `Reject ${label} request ${item.id}`,
              on: { click: () => decide(item.id, 'reject') } }))))));
    } catch (error) { say(message, error.message, false); }
  };
  const decide = async (ident, verdict) => {
    try {
      const done = await call('POST', `${path}/${encodeURIComponent(ident)}/${verdict}`);
      say(message, verdict === 'approve'
        ? `Approved ${label} request ${ident}: certificate ${done.serial} issued; the client gets it on its next ${spec.retry}.`
        : `Rejected ${label} request ${ident}.`);
    } catch (error) { say(message, `Not decided: ${error.message}`, false); }
    await load();
  };
  return { nodes: [message, list], load };
}

async function enrollment(section, who) {
  section.append(el('h2', { text: 'Enrollment: EST and SCEP' }));
  // token:create is what the API asks for (an organization's administrator; a super
  // admin): asking without it would only earn 403s and audited refusals.
  if (!who.permissions.includes('token:create')) {
    section.append(el('p', { class: 'help', text: 'Enrollment secrets, challenges and approvals are for administrators (pki_admin, pki_super_admin).' }));
    return;
  }
  // The organization field shows the caller's slug (the API takes a slug or an id).
  let org = who.organization_id ? who.organization_id : 'default';
  if (who.organization_id) {
    try { org = (await call('GET', `/api/v1/organizations/${encodeURIComponent(org)}`)).slug; } catch (_) { /* the id works too */ }
  }
  const scope = { ...who, organization_id: org };
  const parts = {
    est: credentials({
      protocol: 'est', noun: 'EST secret', path: '/api/v1/est/secrets', minutes: 1440,
      fields: [['label', 'Label (optional)', 'empty: any label of the organization'],
        ['subject', 'Subject (optional)', 'e.g. CN=dev1.example: the CSR must name exactly this']],
      columns: [['Label', 'label'], ['Subject', 'subject', 'wide-only']],
      shown: (s) => [['User', s.user], ['Password', s.password]],
      hint: (s) => `HTTP Basic on the EST port, e.g. curl --user ${s.user}:PASSWORD …/.well-known/est/${s.label ? `${s.label}/` : ''}simpleenroll`,
    }, scope),
    estQueue: queue({ protocol: 'est', path: '/api/v1/est/pending', label: 'EST', scope: ['Label', 'label'], retry: 'identical request' }),
    scep: credentials({
      protocol: 'scep', noun: 'SCEP challenge', path: '/api/v1/scep/challenges', minutes: 60,
      fields: [['profile', 'Profile (optional)', 'the endpoint /scep/ORG/PROFILE; empty: external_integration']],
      columns: [['Profile', 'profile']],
      shown: (c) => [['Challenge password', c.password]],
      hint: (c) => `The CSR's challengePassword for the endpoint of profile ${c.profile}.`,
    }, scope),
    scepQueue: queue({ protocol: 'scep', path: '/api/v1/scep/pending', label: 'SCEP', scope: ['Profile', 'profile'], retry: 'CertPoll' }),
  };
  const refresh = el('button', { type: 'button', text: 'Refresh the lists',
    on: { click: () => Promise.all(Object.values(parts).map((part) => part.load())) } });
  section.append(el('p', { class: 'actions' }, refresh),
    el('section', { 'aria-labelledby': 'est-title' }, el('h3', { id: 'est-title', text: 'EST one-time secrets' }), ...parts.est.nodes),
    el('section', { 'aria-labelledby': 'est-queue-title' }, el('h3', { id: 'est-queue-title', text: 'EST requests waiting for approval' }), ...parts.estQueue.nodes),
    el('section', { 'aria-labelledby': 'scep-title' }, el('h3', { id: 'scep-title', text: 'SCEP one-time challenges' }), ...parts.scep.nodes),
    el('section', { 'aria-labelledby': 'scep-queue-title' }, el('h3', { id: 'scep-queue-title', text: 'SCEP requests waiting for approval' }), ...parts.scepQueue.nodes));
  await Promise.all(Object.values(parts).map((part) => part.load()));
}

export const ENROLLMENT_VIEWS = { enrollment };
