// Calls to the documented REST API (/api/v1) and the sign-in endpoints, with the session
// cookie (sent by the browser, same origin) and the CSRF header on every state change.
let csrf = null;

export class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

export function setCsrf(value) { csrf = value; }

export async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD') {
    if (csrf) headers['X-CSRF-Token'] = csrf;
  }
  const init = { method, headers, credentials: 'same-origin' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    window.dispatchEvent(new CustomEvent('vcc-signed-out'));
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const problem = await response.json();
      detail = problem.detail || problem.title || detail;
    } catch (_) { /* not problem+json */ }
    throw new ApiError(response.status, `${response.status}: ${detail}`);
  }
  if (response.status === 204) return null;
  return response.json();
}

// Every page of a list ({items, next}), up to `maxPages`.
export async function all(path, maxPages = 20) {
  const items = [];
  let url = path;
  for (let i = 0; i < maxPages && url; i += 1) {
    const page = await call('GET', url);
    items.push(...page.items);
    if (!page.next) break;
    const sep = path.includes('?') ? '&' : '?';
    url = `${path}${sep}cursor=${encodeURIComponent(page.next)}`;
  }
  return items;
}

// A GET whose answer is not JSON (a report's bytes): the Blob and the response headers.
export async function fetchBlob(path) {
  const response = await fetch(path, { credentials: 'same-origin' });
  if (response.status === 401) window.dispatchEvent(new CustomEvent('vcc-signed-out'));
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, `${response.status}: ${detail}`);
  }
  return { blob: await response.blob(), headers: response.headers };
}
