// The services view (issue 17): the service registry (GET /api/v1/services) with each
// service's certificate, its renewal state (ok, due, overdue = expired, none) and how long
// ago the service last sent a heartbeat.
import { all } from './api.js';
import { DAY, cell, day, el, table, when } from './views.js';

const RENEWAL = { ok: 'ok', due: 'due', expired: 'overdue (expired)', none: 'no certificate' };

// "3 min ago", "2 h ago", "4 days ago"; "never" without a heartbeat.
export function age(iso, now = Date.now()) {
  if (!iso) return 'never';
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 36 * 3600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} days ago`;
}

export async function services(section) {
  section.append(el('h2', { text: 'Services' }));
  const items = await all('/api/v1/services?limit=100');
  const now = Date.now();
  const counts = { ok: 0, due: 0, expired: 0, none: 0 };
  for (const s of items) counts[s.renewal_state] = (counts[s.renewal_state] || 0) + 1;
  section.append(el('p', { id: 'renewal-summary', role: 'status',
    text: `${items.length} service(s): ${counts.ok} ok, ${counts.due} due for renewal, `
      + `${counts.expired} overdue, ${counts.none} without a certificate.` }));
  const rows = items.map((s) => {
    const c = s.certificate;
    const left = c && c.not_after ? Math.floor((Date.parse(c.not_after) - now) / DAY) : null;
    return el('tr', {},
      el('td', {}, el('span', { text: s.name }), el('br'), el('span', { class: 'mono help', text: s.slug })),
      cell(s.type, 'wide-only'), cell(s.environment, 'wide-only'),
      cell(s.organization_id, 'wide-only'),
      cell(c ? c.serial : null, 'mono'),
      cell(c ? `${day(c.not_after)}${left !== null ? ` (${left} days)` : ''}` : null),
      el('td', { class: `renewal-${s.renewal_state}`, text: RENEWAL[s.renewal_state] || s.renewal_state }),
      el('td', { title: when(s.last_seen), text: age(s.last_seen, now) }),
      el('td', { class: `health-${s.health_status || 'unknown'}`, text: s.health_status || '—' }));
  });
  section.append(table(`${items.length} registered service(s)`,
    [['Service'], ['Type', 'wide-only'], ['Environment', 'wide-only'], ['Organization', 'wide-only'],
      ['Certificate'], ['Expires'], ['Renewal'], ['Heartbeat'], ['Health']], rows));
}
