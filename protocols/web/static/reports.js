// The compliance reports view (issue 17): the stored reports (GET /api/v1/reports; each
// opened or downloaded again from GET /api/v1/reports/{name}/{id}) and a
// form that generates one (GET /api/v1/reports/{name}: the API stores and audits it and
// names it in X-Report-Id and X-Report-SHA256); the answer is offered to open or download
// from the browser's memory (a blob: URL, same origin), so nothing is fetched twice.
import { all, fetchBlob } from './api.js';
import { cell, el, filterField, may, problem, table, when } from './views.js';

const NAMES = [['certificate_lifecycle', 'Certificate lifecycle'], ['crypto_inventory', 'Crypto inventory']];
const FORMATS = ['html', 'json', 'csv'];
let lastUrl = null;  // the previous blob: URL, released when a new report replaces it

const size = (n) => (n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);

export async function reports(section, who) {
  section.append(el('h2', { text: 'Compliance reports' }));
  if (!may(who, 'compliance:read')) {
    section.append(el('p', { class: 'help', text: 'Compliance reports need the compliance:read permission.' }));
    return;
  }
  const name = el('select', { name: 'report' }, ...NAMES.map(([v, t]) => el('option', { value: v, text: t })));
  const format = el('select', { name: 'format' }, ...FORMATS.map((f) => el('option', { value: f, text: f })));
  const from = el('input', { type: 'date', name: 'from' });
  const to = el('input', { type: 'date', name: 'to' });
  const org = el('input', { type: 'text', name: 'organization', spellcheck: 'false',
    placeholder: who.organization_id ? '' : 'all organizations' });
  const form = el('form', { class: 'filters', 'aria-label': 'Generate a report' },
    filterField('Report', 'report-name', name), filterField('Format', 'report-format', format),
    filterField('From (optional)', 'report-from', from), filterField('To (optional)', 'report-to', to),
    who.organization_id ? null : filterField('Organization (optional)', 'report-org', org),
    el('button', { type: 'submit', text: 'Generate' }));
  const result = el('div', { id: 'report-result' });
  const list = el('div', { id: 'report-list' });
  section.append(form, result, el('h3', { text: 'Stored reports' }), list);

  const load = async () => {
    try {
      const items = (await all('/api/v1/reports?limit=100')).reverse();
      list.replaceChildren(table(`${items.length} stored report(s), newest first`,
        [['Generated'], ['Report'], ['Format'], ['Period', 'wide-only'], ['Organization', 'wide-only'],
          ['Size'], ['SHA-256', 'wide-only'], ['By', 'wide-only'], ['Stored copy']],
        items.map((r) => {
          // the stored bytes again (GET /api/v1/reports/{name}/{id}), with the session cookie
          const href = `/api/v1/reports/${encodeURIComponent(r.report)}/${encodeURIComponent(r.id)}`;
          return el('tr', {}, cell(when(r.generated_at)), cell(r.report), cell(r.format),
            cell(`${when(r.period.from)} → ${when(r.period.to)}`, 'wide-only'),
            cell(r.organization_id || 'all', 'wide-only'), cell(size(r.size)),
            cell(r.sha256, 'mono wide-only'), cell(r.generated_by, 'wide-only'),
            el('td', {}, el('span', { class: 'actions' },
              el('a', { href, target: '_blank', rel: 'noopener', 'aria-label': `Open report ${r.id}`, text: 'Open' }),
              el('a', { href, download: `${r.report}-${r.id}.${r.format}`, 'aria-label': `Download report ${r.id}`, text: 'Download' }))));
        })));
    } catch (error) { problem(list, error); }
  };

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const params = new URLSearchParams({ format: format.value });
    if (from.value) params.set('from', from.value);
    if (to.value) params.set('to', to.value);
    if (org.value.trim() && !who.organization_id) params.set('organization', org.value.trim());
    result.replaceChildren(el('p', { role: 'status', text: 'Generating…' }));
    try {
      const { blob, headers } = await fetchBlob(`/api/v1/reports/${name.value}?${params}`);
      const id = headers.get('X-Report-Id');
      const sha = headers.get('X-Report-SHA256');
      if (lastUrl) URL.revokeObjectURL(lastUrl);
      lastUrl = URL.createObjectURL(blob);
      const file = `${name.value}-${id}.${format.value}`;
      const heading = el('h3', { id: 'report-title', tabindex: '-1', text: `Report ${id}` });
      result.replaceChildren(el('section', { class: 'panel', 'aria-labelledby': 'report-title' }, heading,
        el('dl', { class: 'detail' },
          el('dt', { text: 'Report' }), el('dd', { text: `${name.value} (${format.value}, ${size(blob.size)})` }),
          el('dt', { text: 'SHA-256' }), el('dd', { class: 'mono', id: 'report-sha', text: sha })),
        el('p', { class: 'actions' },
          el('a', { href: lastUrl, target: '_blank', rel: 'noopener', text: 'Open' }),
          el('a', { href: lastUrl, download: file, text: `Download ${file}` }))));
      heading.focus();
      await load();
    } catch (error) { problem(result, error); }
  });
  await load();
}
