// The views of the first slice: CA hierarchy, certificates (search, detail, revoke,
// download), the expiry timeline (an SVG drawn here) and the audit trail with its chain
// status. Every value goes into the DOM as text (textContent), never as markup. The small
// DOM helpers (el, table, cell, ...) are exported for the other view modules.
import { all, call } from './api.js';

const SVG = 'http://www.w3.org/2000/svg';
export const DAY = 86400000;
const REASONS = ['unspecified', 'key_compromise', 'ca_compromise', 'affiliation_changed',
  'superseded', 'cessation_of_operation', 'certificate_hold', 'privilege_withdrawn'];

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'text') node.textContent = value;
    else if (key === 'on') for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else node.setAttribute(key, value === true ? '' : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

export const day = (iso) => (iso ? iso.slice(0, 10) : '—');
export const when = (iso) => (iso ? iso.replace('T', ' ').replace(/\.\d+/, '').replace('Z', ' UTC') : '—');

export function table(caption, headers, rows) {
  const head = el('tr', {}, ...headers.map(([label, cls]) => el('th', { scope: 'col', class: cls, text: label })));
  // A table wider than a narrow screen scrolls in its box: the box takes focus, so that
  // the keyboard can scroll it too (axe: scrollable-region-focusable).
  return el('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': caption }, el('table', {},
    el('caption', { text: caption }), el('thead', {}, head), el('tbody', {}, ...rows)));
}

// {"dns": [...], "ip": [...]} -> "dns: a, b; ip: c"
function sanText(san) {
  return Object.entries(san || {}).filter(([, v]) => v && v.length)
    .map(([kind, values]) => `${kind}: ${values.join(', ')}`).join('; ');
}

// Whether the signed-in principal may do `action` (the API's rule, Principal.can): the
// permission itself, its _own form or its area's "*". Views ask first, so that the page
// does not earn 403s (and their audited refusals) for what it could not show anyway.
export function may(who, action) {
  const perms = who.permissions || [];
  return perms.includes(action) || perms.includes(`${action}_own`)
    || perms.includes(`${action.split(':')[0]}:*`);
}

export function cell(value, cls) { return el('td', { class: cls, text: value ?? '—' }); }

export function problem(target, error) {
  target.replaceChildren(el('p', { class: 'error', role: 'alert', text: error.message }));
}

// ---------------------------------------------------------------- CA hierarchy
async function cas(section) {
  section.append(el('h2', { text: 'CA hierarchy' }));
  const items = await all('/api/v1/cas?limit=100');
  const byParent = new Map();
  const ids = new Set(items.map((c) => c.id));
  for (const ca of items) {
    const parent = ids.has(ca.parent_id) ? ca.parent_id : null;
    if (!byParent.has(parent)) byParent.set(parent, []);
    byParent.get(parent).push(ca);
  }
  const rows = [];
  const now = Date.now();
  const walk = (parent, depth) => {
    for (const ca of byParent.get(parent) || []) {
      const left = Math.floor((Date.parse(ca.not_after) - now) / DAY);
      rows.push(el('tr', {},
        el('td', { class: `depth-${Math.min(depth, 3)}` },
          el('span', { class: 'mono', text: `${depth ? '└ ' : ''}${ca.name}` })),
        cell(ca.type), el('td', { class: `status-${ca.status}`, text: ca.status }),
        cell(ca.organization_id, 'wide-only'),
        cell(`${day(ca.not_before)} → ${day(ca.not_after)} (${left} days left)`),
        cell(ca.key), cell(ca.key_backend)));
      walk(ca.id, depth + 1);
    }
  };
  walk(null, 0);
  section.append(table(`${items.length} certificate authorities, each under its parent`,
    [['Name'], ['Type'], ['Status'], ['Organization', 'wide-only'], ['Validity'], ['Key'],
      ['Key backend']], rows));
}

// ---------------------------------------------------------------- certificates
export function filterField(label, id, control) {
  control.id = id;
  return el('div', {}, el('label', { for: id, text: label }), control);
}

async function certificates(section, who) {
  section.append(el('h2', { text: 'Certificates' }));
  const q = el('input', { type: 'search', name: 'q' });
  const status = el('select', { name: 'status' },
    ...['', 'active', 'revoked', 'expired'].map((s) => el('option', { value: s, text: s || 'any' })));
  const profile = el('input', { type: 'text', name: 'profile' });
  const form = el('form', { class: 'filters', role: 'search', 'aria-label': 'Find certificates' },
    filterField('Search (name or serial)', 'cert-q', q), filterField('Status', 'cert-status', status),
    filterField('Profile', 'cert-profile', profile), el('button', { type: 'submit', text: 'Search' }));
  const detail = el('div', { id: 'cert-detail' });
  const results = el('div', { id: 'cert-results' });
  section.append(form, detail, results);

  const load = async () => {
    const params = new URLSearchParams({ limit: '100' });
    if (q.value.trim()) params.set('q', q.value.trim());
    if (status.value) params.set('status', status.value);
    if (profile.value.trim()) params.set('profile', profile.value.trim());
    try {
      const page = await call('GET', `/api/v1/certificates?${params}`);
      const rows = page.items.map((c) => el('tr', {},
        el('td', { class: 'mono' }, el('button', {
          type: 'button', class: 'link', 'aria-label': `Details of ${c.serial}`, text: c.serial,
          on: { click: () => showDetail(c.serial) },
        })),
        cell(c.common_name), cell(c.profile, 'wide-only'), cell(day(c.not_after)),
        el('td', { class: `status-${c.status}`, text: c.status }),
        cell(c.organization_id, 'wide-only')));
      results.replaceChildren(table(
        `${page.items.length} certificate(s)${page.next ? ' (first 100: narrow the search)' : ''}`,
        [['Serial'], ['Common name'], ['Profile', 'wide-only'], ['Expires'], ['Status'],
          ['Organization', 'wide-only']], rows));
    } catch (error) { problem(results, error); }
  };

  const showDetail = async (serial) => {
    try {
      const c = await call('GET', `/api/v1/certificates/${encodeURIComponent(serial)}`);
      const path = `/api/v1/certificates/${encodeURIComponent(c.serial)}`;
      const heading = el('h3', { id: 'detail-title', tabindex: '-1', text: `Certificate ${c.serial}` });
      const fields = [['Subject', c.subject], ['Common name', c.common_name], ['Profile', c.profile],
        ['Names (SAN)', sanText(c.san)], ['Valid from', when(c.not_before)],
        ['Valid until', when(c.not_after)], ['Status', c.status],
        ['Revoked at', c.revoked_at ? when(c.revoked_at) : null],
        ['Revocation reason', c.revocation_reason]].filter(([, v]) => v);
      const panel = el('section', { class: 'panel', 'aria-labelledby': 'detail-title' }, heading,
        el('dl', { class: 'detail' }, ...fields.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })])),
        el('p', { class: 'actions' },
          el('a', { href: `${path}?format=pem`, download: `${c.serial}.pem`, text: 'Download PEM (with chain)' }),
          el('a', { href: `${path}?format=der`, download: `${c.serial}.cer`, text: 'Download DER' })));
      if (c.status !== 'revoked' && who.permissions.includes('cert:revoke')) {
        const reason = el('select', { id: 'revoke-reason' },
          ...REASONS.map((r) => el('option', { value: r, text: r })));
        const message = el('p', { role: 'status', id: 'revoke-message' });
        const revoke = el('form', { class: 'actions', 'aria-label': 'Revoke this certificate' },
          el('div', {}, el('label', { for: 'revoke-reason', text: 'Revocation reason' }), reason),
          el('button', { type: 'submit', class: 'danger', text: 'Revoke' }));
        revoke.addEventListener('submit', async (event) => {
          event.preventDefault();
          try {
            await call('POST', `${path}/revoke`, { reason: reason.value });
            await showDetail(c.serial);
            document.getElementById('revoke-message')?.remove();
            detail.querySelector('section').append(el('p', { class: 'ok', role: 'status', text: `Revoked (${reason.value}).` }));
            await load();
          } catch (error) {
            message.className = 'error';
            message.textContent = `Not revoked: ${error.message}`;
          }
        });
        panel.append(revoke, message);
      }
      detail.replaceChildren(panel);
      heading.focus();
    } catch (error) { problem(detail, error); }
  };

  form.addEventListener('submit', (event) => { event.preventDefault(); load(); });
  await load();
}

// ---------------------------------------------------------------- expiry timeline
async function timeline(section) {
  section.append(el('h2', { text: 'Expiry timeline: the next 90 days' }));
  const now = Date.now();
  const end = new Date(now + 90 * DAY).toISOString().replace(/\.\d+/, '');
  const items = (await all(`/api/v1/certificates?status=active&expiring_before=${encodeURIComponent(end)}&limit=200`))
    .filter((c) => Date.parse(c.not_after) >= now);
  const counts = new Array(90).fill(0);
  for (const c of items) counts[Math.min(89, Math.floor((Date.parse(c.not_after) - now) / DAY))] += 1;
  const max = Math.max(1, ...counts);
  const [W, H, L, B, T] = [900, 240, 40, 40, 16];
  const barW = (W - L - 30) / 90;  // room on the right for the last date
  const chart = svg('svg', { class: 'timeline', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': 'tl-title tl-desc' },
    svg('title', { id: 'tl-title' }, 'Certificates expiring per day'),
    svg('desc', { id: 'tl-desc' }, `${items.length} active certificates expire in the next 90 days; the busiest day has ${Math.max(...counts)}.`),
    svg('line', { class: 'axis', x1: L, y1: H - B, x2: L + 90 * barW, y2: H - B }),
    svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }),
    svg('text', { x: L - 6, y: T + 4, 'text-anchor': 'end' }, String(max)),
    svg('text', { x: L - 6, y: H - B, 'text-anchor': 'end' }, '0'));
  for (let d = 0; d <= 90; d += 15) {
    const x = L + d * barW;
    chart.append(svg('line', { class: 'axis', x1: x, y1: H - B, x2: x, y2: H - B + 5 }),
      svg('text', { x, y: H - B + 18, 'text-anchor': 'middle' }, new Date(now + d * DAY).toISOString().slice(5, 10)),
      svg('text', { x, y: H - B + 32, 'text-anchor': 'middle' }, `+${d}d`));
  }
  counts.forEach((n, d) => {
    if (!n) return;
    const h = ((H - B - T) * n) / max;
    chart.append(svg('rect', { class: d < 14 ? 'bar soon' : 'bar', x: L + d * barW + 1, y: H - B - h, width: Math.max(1, barW - 2), height: h },
      svg('title', {}, `${n} certificate(s) expire on ${new Date(now + d * DAY).toISOString().slice(0, 10)}`)));
  });
  section.append(el('figure', {}, chart,
    el('figcaption', { class: 'help', text: 'Bars: certificates expiring per day; red: within 14 days.' })));
  const soonest = [...items].sort((a, b) => Date.parse(a.not_after) - Date.parse(b.not_after)).slice(0, 25);
  section.append(table(`The ${soonest.length} soonest of ${items.length}`,
    [['Serial'], ['Common name'], ['Expires'], ['Days left']],
    soonest.map((c) => el('tr', {}, cell(c.serial, 'mono'), cell(c.common_name), cell(when(c.not_after)),
      cell(String(Math.floor((Date.parse(c.not_after) - now) / DAY)))))));
}

// ---------------------------------------------------------------- audit trail
async function audit(section, who) {
  section.append(el('h2', { text: 'Audit trail' }));
  const chain = el('p', { id: 'chain-status', role: 'status', text: 'Checking the hash chain…' });
  section.append(chain);
  const action = el('input', { type: 'text', name: 'action' });
  const resource = el('input', { type: 'text', name: 'resource' });
  const period = el('select', { name: 'since' },
    ...[['1', 'last 24 hours'], ['7', 'last 7 days'], ['30', 'last 30 days']].map(([v, t]) => el('option', { value: v, text: t })));
  const form = el('form', { class: 'filters', role: 'search', 'aria-label': 'Filter the audit trail' },
    filterField('Action', 'audit-action', action), filterField('Resource (e.g. a serial)', 'audit-resource', resource),
    filterField('Period', 'audit-period', period), el('button', { type: 'submit', text: 'Filter' }));
  const results = el('div', { id: 'audit-results' });
  section.append(form, results);
  const load = async () => {
    const params = new URLSearchParams({ limit: '200' });
    params.set('since', new Date(Date.now() - Number(period.value) * DAY).toISOString().replace(/\.\d+/, ''));
    if (action.value.trim()) params.set('action', action.value.trim());
    if (resource.value.trim()) params.set('resource', resource.value.trim());
    try {
      const entries = (await all(`/api/v1/audit?${params}`, 10)).reverse().slice(0, 300);
      results.replaceChildren(table(`${entries.length} event(s), newest first`,
        [['Seq'], ['Time'], ['Event'], ['Actor', 'wide-only'], ['Resource'], ['Status']],
        entries.map((e) => el('tr', {}, cell(String(e.seq)), cell(when(e.timestamp)), cell(e.event_type),
          cell(e.actor_id, 'wide-only'), cell(e.resource_id, 'mono'),
          el('td', { class: `status-${e.status}`, text: e.status })))));
    } catch (error) { problem(results, error); }
  };
  form.addEventListener('submit', (event) => { event.preventDefault(); load(); });
  // The chain is one across organizations: verifying it takes audit:read (the API's rule;
  // asking without it would only earn a 403 and an audited refusal).
  const verify = !who.permissions.includes('audit:read')
    ? Promise.resolve().then(() => {
      chain.textContent = 'Chain status: verifying the whole hash chain needs the audit:read permission.';
    })
    : call('GET', '/api/v1/audit/verify').then((r) => {
      chain.className = r.intact ? 'chain-ok' : 'chain-bad';
      chain.textContent = r.intact
        ? `Hash chain intact: ${r.entries} entries verified up to #${r.head_seq}.`
        : `Hash chain BROKEN: ${r.problems.map((p) => `#${p.seq} ${p.problem}`).join('; ')}`;
    }, (error) => { chain.className = 'error'; chain.textContent = `Chain status unavailable: ${error.message}`; });
  await Promise.all([verify, load()]);
}

export const VIEWS = { cas, certificates, timeline, audit };
