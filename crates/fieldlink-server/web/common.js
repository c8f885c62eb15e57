// What the console and the admin page share: DOM helpers, the message bar, and what
// each error code means for the person at the screen (codes: docs/protocol.md).

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/// Makes an element: el('button', {class: 'x', onclick: f}, 'text', child, ...).
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k in e && typeof v !== 'string') e[k] = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null && c !== false) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

/// What to do about each failure, shown under the server's own message.
const HINTS = {
  LOGIN_FAILED: 'Check the device id (project/device), the password and that the id is a remote device; the server does not say which was wrong, its log does. A key-derived password ends in _<expiry>.',
  WRONG_PASSWORD: 'Wrong password for this device. A key-derived password ends in _<expiry>; ask your administrator for a new one if unsure.',
  PASSWORD_EXPIRED: 'This key-derived password has expired: generate a new one (admin page, "Key-derived password").',
  KEY_PASSWORD_REQUIRED: 'This device logs in only with a password derived from the project key.',
  UNKNOWN_DEVICE: 'No such device in this project (and the project does not register it automatically).',
  UNKNOWN_PROJECT: 'No such project: the device id is written project/device.',
  TOO_MANY_ATTEMPTS: 'Too many failed logins: wait before trying again.',
  WRONG_ROLE: 'This id belongs to a field device; the console logs in as a remote device.',
  REPLACED: 'The same device id logged in somewhere else.',
  NOT_WHITELISTED: 'This remote device is not on the project\'s whitelist for that field device: ask an administrator to add it, or enter an authorization code for it.',
  SESSION_CODE_EXPIRED: 'The authorization code has expired: ask for a new one.',
  SESSION_CODE_INVALID: 'The authorization code is not valid for this remote and field device.',
  FIELD_OFFLINE: 'The field device is offline; its windows resume by themselves when it comes back.',
  FIELD_LIST_DISABLED: 'This project does not let remote devices list field devices: open one by its id below.',
  STREAM_OUT_OF_RANGE: 'That stream id does not exist on the field device.',
  CONN_FD_OUT_OF_RANGE: 'No such window (receiver).',
  NOT_MASTER: 'Only the master may send control data: request master first.',
  NOT_IN_SESSION: 'Open the field device first (watch a stream or press Operate).',
  NOT_CONNECTED: 'A diagnosis measures what a window plays: put one of its streams in a window first.',
  DIAG_BUSY: 'A diagnosis of this field device is already measuring; its report comes within about 10 s.',
  MESSAGE_TOO_LARGE: 'A control message is at most 700 bytes.',
  RATE_LIMITED: 'At most 100 control messages per second.',
  UNAUTHORIZED: 'Missing or wrong admin token.',
  KEY_MODE_OFF: 'The project has no shared key in use: set Mode 1 and a 32-character key first.',
  TIMEOUT: 'The server did not answer in time.',
};

export function explain(err) {
  const hint = HINTS[err.name];
  return `${err.message || err.name}${hint && hint !== err.message ? `\n${hint}` : ''}`;
}

let msgTimer;
/// Shows a message in the bar at the top: kind 'error' (stays until closed or replaced)
/// or 'info' (goes after a few seconds). `action` is an optional [label, fn] button.
export function showMessage(text, kind = 'error', action) {
  const bar = $('#msg');
  clearTimeout(msgTimer);
  bar.className = kind;
  bar.replaceChildren(
    el('span', { class: 'text', role: kind === 'error' ? 'alert' : 'status' }, text),
    action ? el('button', { onclick: action[1] }, action[0]) : null,
    el('button', { onclick: () => { bar.hidden = true; }, title: 'Dismiss' }, '✕'),
  );
  bar.hidden = false;
  if (kind === 'info') msgTimer = setTimeout(() => { bar.hidden = true; }, 4000);
}

export function clearMessage() { $('#msg').hidden = true; }

/// An error from the server, as thrown by the signalling client and the admin API.
export class ServerError extends Error {
  constructor(m) {
    super(m.message || m.name);
    this.code = m.code;
    this.name = m.name || 'ERROR';
  }
}

export function hex(bytes) {
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(' ');
}

/// UTF-8 text of bytes with control characters shown as '·' (for logs).
export function printable(bytes) {
  return new TextDecoder().decode(bytes).replace(/[\u0000-\u001f\u007f]/g, '·');
}
