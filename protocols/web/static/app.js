// The web admin page: sign-in, navigation by URL fragment, and the views (views.js).
import { call, setCsrf } from './api.js';
import { VIEWS } from './views.js';
import { services } from './services.js';
import { acme } from './acme.js';
import { reports } from './reports.js';
import { rates } from './rates.js';
import { ENROLLMENT_VIEWS } from './enrollment.js';

Object.assign(VIEWS, { services, acme, reports, rates }, ENROLLMENT_VIEWS);

const $ = (id) => document.getElementById(id);
let who = null;

function showSignIn(message) {
  who = null;
  setCsrf(null);
  $('nav').hidden = true;
  $('who').hidden = true;
  $('view').hidden = true;
  $('view').replaceChildren();
  $('signin').hidden = false;
  $('signin-error').textContent = message || '';
  $('token').value = '';
  $('token').focus();
}

function signedIn(session) {
  who = session;
  setCsrf(session.csrf);
  $('signin').hidden = true;
  $('nav').hidden = false;
  $('who').hidden = false;
  $('who-text').textContent = `${session.role} · ${session.organization_id || 'all organizations'}`;
  route();
}

async function route() {
  if (!who) return;
  const name = (location.hash || '#certificates').slice(1).split('/')[0];
  const view = VIEWS[name] || VIEWS.certificates;
  for (const link of document.querySelectorAll('nav a')) {
    if (link.getAttribute('href') === `#${name}`) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const section = $('view');
  section.hidden = false;
  section.replaceChildren();
  try {
    await view(section, who);
  } catch (error) {
    if (error.status === 401) return;  // the signed-out handler shows the form
    const p = document.createElement('p');
    p.className = 'error';
    p.setAttribute('role', 'alert');
    p.textContent = error.message;
    section.append(p);
  }
}

async function start() {
  $('signin-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    $('signin-error').textContent = '';
    try {
      signedIn(await call('POST', '/admin/session', { token: $('token').value.trim() }));
      $('main').focus();
    } catch (error) {
      $('signin-error').textContent = `Sign-in failed (${error.message})`;
    }
  });
  $('cert-signin-button').addEventListener('click', async () => {
    $('signin-error').textContent = '';
    try {
      signedIn(await call('POST', '/admin/session', {}));  // no token: the client certificate
      $('main').focus();
    } catch (error) {
      $('signin-error').textContent = `Sign-in failed (${error.message})`;
    }
  });
  $('sign-out').addEventListener('click', async () => {
    try { await call('DELETE', '/admin/session'); } catch (_) { /* already gone */ }
    showSignIn('Signed out.');
  });
  window.addEventListener('hashchange', route);
  // The skip link moves focus only: the fragment names views here.
  document.querySelector('.skip').addEventListener('click', (event) => {
    event.preventDefault();
    $('main').focus();
  });
  window.addEventListener('vcc-signed-out', () => {
    if (who) showSignIn('Your session has ended. Sign in again.');
  });
  const session = await call('GET', '/admin/session');
  $('cert-signin').hidden = !session.client_certificate;
  if (session.signed_in) signedIn(session);
  else showSignIn('');
}

start();
