// The live rates view (issue 17): polls GET /api/v1/stats every 5 s and shows rates from
// the last two samples: certificates issued per minute, OCSP answers per second and the
// share served from the response cache, time-stamps per minute. The counters are the
// answering process's (with several workers each counts its own): two samples make a rate
// only when they name the same process.
import { call } from './api.js';
import { el, may, problem, table, when } from './views.js';

const POLL_MS = 5000;
let timer = null;  // one poller, whatever view was open before

function stop() { if (timer !== null) { clearTimeout(timer); timer = null; } }
window.addEventListener('hashchange', stop);
window.addEventListener('vcc-signed-out', stop);

const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);
const fixed = (n, d = 2) => (Number.isFinite(n) ? n.toFixed(d) : '—');

// The rows of the table from two samples (prev may be null: totals only).
export function rateRows(prev, cur) {
  const seconds = prev ? (Date.parse(cur.sampled_at) - Date.parse(prev.sampled_at)) / 1000 : 0;
  const comparable = prev && prev.process.id === cur.process.id && seconds > 0;
  const rate = (f, per) => (comparable ? fixed(((f(cur) - f(prev)) / seconds) * per) : '—');
  const rows = [
    ['Certificates issued', (s) => s.issuance.issued, 60, 'per minute'],
    ['Requests refused', (s) => s.issuance.rejected + s.issuance.error, 60, 'per minute'],
    ['Revocations', (s) => s.revocations, 60, 'per minute'],
  ];
  if (cur.ocsp) {
    rows.push(['OCSP responses', (s) => sum(s.ocsp.responses), 1, 'per second']);
    rows.push(['OCSP from the cache', (s) => s.ocsp.cache.hit, 1, 'per second']);
  }
  if (cur.tsa) {
    rows.push(['Time-stamps granted', (s) => s.tsa.granted, 60, 'per minute']);
    rows.push(['Time-stamps rejected', (s) => s.tsa.rejection, 60, 'per minute']);
  }
  const out = rows.map(([label, f, per, unit]) => [label, rate(f, per), unit, String(f(cur))]);
  if (cur.ocsp) {
    const lookups = (s) => s.ocsp.cache.hit + s.ocsp.cache.miss + s.ocsp.cache.live;
    const answered = comparable ? lookups(cur) - lookups(prev) : 0;
    const ratio = answered > 0 ? `${fixed((100 * (cur.ocsp.cache.hit - prev.ocsp.cache.hit)) / answered, 1)} %` : '—';
    const total = lookups(cur) > 0 ? `${fixed((100 * cur.ocsp.cache.hit) / lookups(cur), 1)} %` : '—';
    out.push(['OCSP cache hit ratio', ratio, 'of answers', total]);
  }
  return { rows: out, comparable, seconds };
}

export async function rates(section, who) {
  stop();
  section.append(el('h2', { text: 'Live rates' }));
  if (!may(who, 'compliance:read')) {
    section.append(el('p', { class: 'help', text: 'Live rates need the compliance:read permission.' }));
    return;
  }
  const status = el('p', { id: 'rates-status', role: 'status', text: 'First sample…' });
  const body = el('div', { id: 'rates-table' });
  section.append(el('p', { class: 'help', text: `Sampled every ${POLL_MS / 1000} s from GET /api/v1/stats: `
    + 'rates between the last two samples; totals since the answering gateway process started '
    + '(with several workers, each counts its own).' }), status, body);
  let prev = null;
  const poll = async () => {
    if (!body.isConnected) return;
    try {
      const cur = await call('GET', '/api/v1/stats');
      if (!body.isConnected) return;
      const { rows, comparable, seconds } = rateRows(prev, cur);
      body.replaceChildren(table(`Counters of process ${cur.process.id} (started ${when(cur.process.started_at)})`
        + `${cur.organization ? `, organization ${cur.organization}` : ''}`,
        [['Measure'], ['Rate'], ['Unit'], ['Total']],
        rows.map((r) => el('tr', {}, ...r.map((v) => el('td', { text: v }))))));
      status.textContent = comparable
        ? `Updated ${when(cur.sampled_at)}: rates over the last ${fixed(seconds, 1)} s.`
        : `Sampled ${when(cur.sampled_at)}: rates after the next sample.`;
      if (!cur.ocsp) {
        status.textContent += ' OCSP and TSA counters are gateway-wide: shown to a principal of every organization only.';
      }
      prev = cur;
    } catch (error) {
      if (error.status === 401) return;
      problem(body, error);
    }
    if (body.isConnected) timer = setTimeout(poll, POLL_MS);
  };
  await poll();
}
