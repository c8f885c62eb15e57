// The administration page: a client of the admin HTTP API (docs/api.md) with the admin
// token kept in this tab's sessionStorage only.

import { $, $$, el, explain, showMessage, clearMessage, ServerError } from './common.js';

const st = { token: sessionStorage.getItem('fieldlink-admin-token') || '', project: null, devices: [] };

async function api(method, path, body) {
  const r = await fetch(`/api/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${st.token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  let v = null;
  if (text) {
    try { v = JSON.parse(text); } catch { v = { name: 'ERROR', message: text }; }
  }
  if (!r.ok) throw new ServerError(v || { name: 'ERROR', message: `${r.status} ${r.statusText}` });
  return v;
}

function fail(e, prefix = '') {
  showMessage(prefix + explain(e instanceof ServerError ? e : { name: 'ERROR', message: String(e.message || e) }));
}

function form(f) {
  return Object.fromEntries(new FormData(f).entries());
}

function securityBody(v) {
  return {
    name: v.name || undefined,
    Mode: Number(v.Mode),
    Key: v.Key,
    AutoRegister: Number(v.AutoRegister),
    FieldListEnable: Number(v.FieldListEnable),
    WhitelistEnable: Number(v.WhitelistEnable),
  };
}

function randomKey() {
  const abc = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return [...bytes].map((b) => abc[b % abc.length]).join('');
}

const when = (ms) => new Date(ms).toLocaleString();

// ---------------------------------------------------------------- projects

async function loadProjects() {
  const list = await api('GET', '/projects');
  $('#project-rows').replaceChildren(...list.map((p) => el('tr', {
    class: `clickable ${p.id === st.project ? 'selected' : ''}`, dataset: { id: p.id }, onclick: () => selectProject(p.id),
  }, el('td', { class: 'mono' }, p.id), el('td', {}, p.name), el('td', {}, p.Mode), el('td', {}, p.AutoRegister),
  el('td', {}, p.FieldListEnable), el('td', {}, p.WhitelistEnable))));
}

async function selectProject(id) {
  st.project = id;
  try {
    const p = await api('GET', `/projects/${encodeURIComponent(id)}`);
    $('#p-id').textContent = p.id;
    const f = $('#security');
    for (const k of ['name', 'Mode', 'Key', 'AutoRegister', 'FieldListEnable', 'WhitelistEnable']) f.elements[k].value = p[k];
    $('#project').hidden = false;
    $('#password-out').hidden = true;
    $('#code-out').hidden = true;
    await Promise.all([loadProjects(), loadDevices(), loadWhitelist(), loadAudit()]);
  } catch (e) { fail(e); }
}

const P = () => `/projects/${encodeURIComponent(st.project)}`;

// ---------------------------------------------------------------- devices

async function loadDevices() {
  st.devices = await api('GET', `${P()}/devices`);
  $('#device-ids').replaceChildren(...st.devices.map((d) => el('option', { value: d.device_id })));
  $('#device-rows').replaceChildren(...st.devices.map((d) => el('tr', { dataset: { id: d.device_id } },
    el('td', {}, el('span', { class: `dot ${d.online ? 'on' : 'off'}`, title: d.online ? 'online' : 'offline' })),
    el('td', { class: 'mono' }, d.device_id, d.auto_registered ? el('span', { class: 'muted' }, ' (auto)') : ''),
    el('td', {}, d.kind),
    el('td', {}, d.name),
    el('td', {}, d.key_password_only ? 'key-derived only' : 'own'),
    el('td', { class: 'audio' }, audioText(d.audio)),
    el('td', {},
      el('button', { title: 'Set a new password', onclick: () => setPassword(d.device_id) }, 'Password…'),
      ' ',
      el('button', { class: 'danger', title: 'Delete the device', onclick: () => deleteDevice(d.device_id) }, 'Delete')))));
}

/// What an online device does with audio: "sends", "hears", both, or "off".
function audioText(a) {
  if (!a) return '';
  return [a.send ? 'sends' : '', a.receive ? 'hears' : ''].filter(Boolean).join(' + ') || 'off';
}

async function setPassword(id) {
  const pw = prompt(`New password for ${st.project}/${id} (or USEPROJECTKEYPWD: only key-derived passwords log in)`);
  if (pw === null) return;
  try {
    await api('PUT', `${P()}/devices/${encodeURIComponent(id)}/password`, { password: pw });
    showMessage(`Password of ${st.project}/${id} changed.`, 'info');
    await loadDevices();
  } catch (e) { fail(e); }
}

async function deleteDevice(id) {
  if (!confirm(`Delete ${st.project}/${id} and its whitelist entries?`)) return;
  try {
    await api('DELETE', `${P()}/devices/${encodeURIComponent(id)}`);
    await Promise.all([loadDevices(), loadWhitelist()]);
  } catch (e) { fail(e); }
}

// ---------------------------------------------------------------- whitelist and audit

async function loadWhitelist() {
  const list = await api('GET', `${P()}/whitelist`);
  $('#whitelist-rows').replaceChildren(...list.map((w) => el('tr', {},
    el('td', { class: 'mono' }, w.remote_id), el('td', { class: 'mono' }, w.field_id),
    el('td', {}, el('button', { onclick: () => removeWhitelist(w) }, 'Remove')))));
}

async function removeWhitelist(w) {
  try {
    await api('DELETE', `${P()}/whitelist/${encodeURIComponent(w.remote_id)}/${encodeURIComponent(w.field_id)}`);
    await loadWhitelist();
  } catch (e) { fail(e); }
}

async function loadAudit() {
  const list = await api('GET', `${P()}/audit?limit=200`);
  $('#audit-rows').replaceChildren(...list.reverse().map((a) => el('tr', {},
    el('td', {}, when(a.ts_ms)), el('td', { class: 'mono' }, a.field_id), el('td', { class: 'mono' }, a.master || 'nobody'),
    el('td', { class: 'mono' }, a.previous_master || 'nobody'), el('td', { class: 'mono' }, a.actor), el('td', {}, a.cause))));
}

// ---------------------------------------------------------------- GB28181

async function loadGb() {
  try {
    const list = await api('GET', '/gb28181/devices');
    $('#gb-note').textContent = list.length ? '' : 'No GB28181 device has registered yet.';
    $('#gb-rows').replaceChildren(...list.map((d) => el('tr', {},
      el('td', {}, el('span', { class: `dot ${d.online ? 'on' : 'off'}`, title: d.online ? 'online' : 'offline' })),
      el('td', { class: 'mono' }, d.id),
      el('td', { class: 'mono' }, d.field_id || '—'),
      el('td', { class: 'mono' }, d.addr ? `${d.addr} (${d.transport})` : '—'),
      el('td', {}, [d.info?.Manufacturer, d.info?.Model].filter(Boolean).join(' ') || '—'),
      el('td', {}, d.channels.length ? el('ul', {}, d.channels.map((c) => el('li', {},
        el('span', { class: 'mono' }, c.id), ` ${c.name || ''} · ${c.status || '?'}${c.playing ? ' · playing' : ''}`))) : '—'),
      el('td', {}, d.always_on ? 'yes' : 'no'))));
  } catch (e) {
    if (e.name === 'NOT_FOUND') {
      $('#gb-note').textContent = 'The GB28181 platform is off on this server (start it with --sip-listen).';
      $('#gb-rows').replaceChildren();
    } else fail(e);
  }
}

// ---------------------------------------------------------------- wiring

async function useToken() {
  clearMessage();
  try {
    await loadProjects();
    sessionStorage.setItem('fieldlink-admin-token', st.token);
    $('#need-token').hidden = true;
    $('#projects').hidden = false;
    $('#gb').hidden = false;
    await loadGb();
  } catch (e) {
    $('#projects').hidden = true;
    $('#project').hidden = true;
    $('#gb').hidden = true;
    $('#need-token').hidden = false;
    fail(e);
  }
}

function onSubmit(sel, f) {
  $(sel).addEventListener('submit', async (e) => {
    e.preventDefault();
    clearMessage();
    try { await f(e.target); } catch (err) { fail(err); }
  });
}

$('#token').value = st.token;
onSubmit('#token-form', async () => { st.token = $('#token').value.trim(); await useToken(); });
for (const b of $$('.gen-key')) {
  b.addEventListener('click', () => { b.closest('label').querySelector('input').value = randomKey(); });
}
onSubmit('#new-project', async (f) => {
  const v = form(f);
  const p = await api('POST', '/projects', { id: v.id.trim(), ...securityBody(v) });
  f.reset();
  showMessage(`Project ${p.id} created.`, 'info');
  await selectProject(p.id);
});
onSubmit('#security', async (f) => {
  await api('PUT', P(), securityBody(form(f)));
  showMessage(`Project ${st.project} saved.`, 'info');
  await selectProject(st.project);
});
$('#delete-project').addEventListener('click', async () => {
  if (!confirm(`Delete project ${st.project} with its devices, whitelist and audit log?`)) return;
  try {
    await api('DELETE', P());
    st.project = null;
    $('#project').hidden = true;
    await loadProjects();
  } catch (e) { fail(e); }
});
onSubmit('#new-device', async (f) => {
  const v = form(f);
  const password = v.keyonly ? 'USEPROJECTKEYPWD' : v.password;
  await api('POST', `${P()}/devices`, { id: v.id.trim(), kind: v.kind, name: v.name || undefined, password });
  f.reset();
  await loadDevices();
});
onSubmit('#gen-password', async (f) => {
  const v = form(f);
  const r = await api('POST', `${P()}/device-password`, { device_id: v.device_id.trim(), valid_minutes: Number(v.valid_minutes) });
  const out = $('#password-out');
  out.replaceChildren(el('div', {}, `${r.device_id}, valid until ${when(r.expire * 60000)}:`), el('b', { class: 'password' }, r.password));
  out.hidden = false;
});
onSubmit('#gen-code', async (f) => {
  const v = form(f);
  const r = await api('POST', `${P()}/session-code`, { remote_id: v.remote_id.trim(), field_id: v.field_id.trim(), valid_minutes: Number(v.valid_minutes) });
  const out = $('#code-out');
  out.replaceChildren(el('div', {}, `${r.remote_id} may watch ${r.field_id} until ${when(r.expire * 60000)}:`), el('b', { class: 'code' }, r.code));
  out.hidden = false;
});
onSubmit('#new-whitelist', async (f) => {
  const v = form(f);
  await api('POST', `${P()}/whitelist`, { remote_id: v.remote_id.trim(), field_id: v.field_id.trim() });
  f.reset();
  await loadWhitelist();
});
$('#refresh-audit').addEventListener('click', () => loadAudit().catch(fail));
$('#refresh-gb').addEventListener('click', loadGb);
if (st.token) useToken();
