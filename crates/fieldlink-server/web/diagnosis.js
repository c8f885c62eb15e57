// A diagnosis report (SPEC §6, docs/diagnostics.md) as the console shows it: every check
// "ok" or its cause in red, the figures with their units.

import { el } from './common.js';

/// A check's cell: "ok", or its cause in red.
function check(v) {
  return el('td', { class: v === 'ok' ? 'ok' : 'bad' }, v === 'ok' ? '✓ ok' : v);
}

/// A number's cell, with its unit and the cause when it is abnormal.
function figure(v, unit, note) {
  const text = v === null || v === undefined ? '—' : `${v}${unit}`;
  return el('td', { class: note ? 'bad' : '', title: note || '' }, note ? `${text} (${note})` : text);
}

/// Shows diagnosis result `m` ({kind, report}) in `box`: the general checks, then per
/// stream a table of the field device's and this console's checks and figures.
export function renderReport(box, m) {
  const r = m.report;
  box.replaceChildren();
  box.hidden = false;
  const ok = m.kind === 1;
  const head = el('div', { class: ok ? 'ok' : 'bad' },
    ok ? `${r.device_id}: measured for 10 s` : `${r.device_id}: diagnosis failed (${r.diag_error})`);
  box.append(head);
  const general = el('table', {},
    el('tr', {}, el('th', {}, 'signalling'), check(r.remote_mqtt_connect)),
    el('tr', {}, el('th', {}, 'mode'), check(r.remote_mode)));
  if (ok && r.diag_error !== 'ok') general.append(el('tr', {}, el('th', {}, 'note'), el('td', {}, r.diag_error)));
  box.append(general);
  for (const s of r.result) {
    box.append(el('h3', {}, `stream ${s.stream_id} → window of conn_fd ${s.conn_fd}`));
    const t = el('table', {}, el('tr', {}, el('th', {}, ''), el('th', {}, 'field device'), el('th', {}, 'this console')));
    const f = s.field || {};
    const rm = s.remote || {};
    const fn = f.notes || {};
    const rn = rm.notes || {};
    const none = el('td', { class: 'muted' }, 'not measured');
    const row = (name, a, b) => t.append(el('tr', {}, el('th', {}, name), a || none.cloneNode(true), b || none.cloneNode(true)));
    row('signalling', s.field && check(f.signal_connect), s.remote && check(rm.signal_connect));
    row('media', s.field && check(f.media_connect), s.remote && check(rm.media_connect));
    row('capture', s.field && check(f.video_capture), null);
    row('encode', s.field && check(f.video_encode), null);
    row('transfer', s.field && check(f.video_transfer), s.remote && check(rm.video_transfer));
    row('decode', null, s.remote && check(rm.video_decode));
    row('frame rate', s.field && figure(f.fps, ' fps', fn.fps), s.remote && figure(rm.fps, ' fps', rn.fps));
    row('bitrate', s.field && figure(f.bps === undefined ? undefined : Math.round(f.bps / 1000), ' kbit/s', fn.bps),
      s.remote && figure(rm.bps === undefined ? undefined : Math.round(rm.bps / 1000), ' kbit/s', rn.bps));
    row('loss', s.field && figure(f.lost, ' %', fn.lost), s.remote && figure(rm.lost, ' %', rn.lost));
    row('round trip', s.field && figure(f.rtt, ' ms', fn.rtt), s.remote && figure(rm.rtt, ' ms', rn.rtt));
    row('latency', null, s.remote && figure(rm.latency, ' ms', rn.latency));
    box.append(t);
  }
  renderPaths(box, r.field_paths || []);
}

/// The field device's network paths (several modems: `network_bind`), one row each.
function renderPaths(box, paths) {
  if (paths.length === 0) return;
  box.append(el('h3', {}, 'network paths of the field device'));
  const t = el('table', { class: 'paths' },
    el('tr', {}, ...['path', 'address', 'state', 'round trip', 'loss', 'share', 'went down', 'check']
      .map((h) => el('th', {}, h))));
  for (const p of paths) {
    t.append(el('tr', {},
      el('td', {}, String(p.path)),
      el('td', {}, p.local),
      el('td', { class: p.state === 'up' ? 'ok' : 'bad' }, p.state),
      figure(p.rtt_ms, ' ms'),
      figure(p.loss_pct, ' %'),
      figure(p.share_pct, ' %'),
      figure(p.downs, p.downs === 1 ? ' time' : ' times'),
      check(p.check)));
  }
  box.append(t);
}
