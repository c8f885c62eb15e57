// The operator console: a remote device in the browser (docs/console.md). It speaks the
// SDK's signalling and WebRTC (docs/protocol.md): one peer connection with one recvonly
// video transceiver per window receiver (conn_fd 0..8) and the two control channels.
//
// Windows: receiver `fd` is drawn in window `windowOf[fd]` (CSS order), so swapping two
// windows (set_windows) moves no element and touches no stream: both keep playing.
//
// `window.fieldlink` exposes counters for tests and for debugging in the browser.

import { $, $$, el, explain, showMessage, clearMessage, ServerError, hex, printable } from './common.js';
import { Signal } from './signal.js';
import { encodeFrame, decodeFrame, LateFilter, RateLimiter, InputState, ControlError } from './control.js';
import { Voice, TALK_KEY } from './voice.js';
import { renderReport } from './diagnosis.js';

const MAX_WINDOWS = 9;
const QOS_LABELS = ['fieldlink-ctl-qos0', 'fieldlink-ctl-qos1'];
/// Above this much buffered, a qos 0 message is dropped rather than sent late.
const LOSSY_BUFFER_LIMIT = 8 * 1024;
const LOG_LINES = 500;
const RECONNECT_DELAYS_MS = [1000, 2000, 4000, 8000, 10000];

const st = {
  creds: null,
  sig: null,
  pc: null,
  dc: [null, null],
  transceivers: [],
  fields: new Map(), // id -> {id, name, online, streams, manual}
  perms: new Map(), // field id -> {self, master}
  control: null, // the field device the control panel operates
  grid: 4,
  windowOf: [...Array(MAX_WINDOWS).keys()], // conn_fd -> window
  watching: Array(MAX_WINDOWS).fill(null), // conn_fd -> {gwid, stream}
  swapFrom: null, // window waiting for the second ⇄
  seq: 0,
  rate: new RateLimiter(),
  late: new LateFilter(),
  input: new InputState(),
  inputTimer: null,
  reconnectTry: 0,
  lastConnError: null,
  prevStats: new Map(), // conn_fd -> last inbound-rtp stats
  latency: Array(MAX_WINDOWS).fill(undefined), // conn_fd -> smoothed capture-to-display ms
};

// Test and debugging hooks: frames presented per receiver; since `resetGaps()`, the
// longest wall-clock gap between two presented frames and the longest step of their
// media (RTP) time, i.e. source frames never shown, and how often the media time went
// backwards (the receiver's stream started again); each receiver's decoder counters
// (`videoStats()`); every stream_state, error and report.
const hooks = {
  frames: Array(MAX_WINDOWS).fill(0),
  mediaBackwards: Array(MAX_WINDOWS).fill(0),
  lastAt: Array(MAX_WINDOWS).fill(null),
  lastMedia: Array(MAX_WINDOWS).fill(null),
  lastReceive: Array(MAX_WINDOWS).fill(null),
  maxReceiveGapMs: Array(MAX_WINDOWS).fill(0),
  maxGapMs: Array(MAX_WINDOWS).fill(0),
  maxMediaGapMs: Array(MAX_WINDOWS).fill(0),
  states: [],
  errors: [],
  reports: [],
  /// Per receiver, the last quality level the server scored; every diagnosis received.
  quality: Array(MAX_WINDOWS).fill(null),
  diagnoses: [],
  resetGaps() {
    hooks.maxGapMs.fill(0); hooks.maxMediaGapMs.fill(0); hooks.maxReceiveGapMs.fill(0);
    hooks.mediaBackwards.fill(0);
  },
  /// Per receiver (conn_fd), its inbound video counters from WebRTC stats: which RTP
  /// stream it gets (ssrc), packets lost, keyframe requests it sent (PLI, FIR), frames
  /// received and decoded. `null` for a receiver with no stats yet.
  async videoStats() {
    const out = Array(MAX_WINDOWS).fill(null);
    if (!st.pc) return out;
    const mids = st.transceivers.map((t) => t.mid);
    const report = await st.pc.getStats();
    for (const s of report.values()) {
      if (s.type !== 'inbound-rtp' || s.kind !== 'video') continue;
      const fd = mids.indexOf(s.mid);
      if (fd < 0) continue;
      out[fd] = {
        ssrc: s.ssrc, packetsLost: s.packetsLost || 0, pliCount: s.pliCount || 0,
        firCount: s.firCount || 0, framesReceived: s.framesReceived,
        framesDecoded: s.framesDecoded || 0, keyFramesDecoded: s.keyFramesDecoded || 0,
      };
    }
    return out;
  },
  /// Sends text (qos 1) to the operated field device without the console's master
  /// check, to see the server refuse a guest (NOT_MASTER warning).
  sendIgnoringPermission(text) {
    const frame = encodeFrame(st.control, st.seq, new TextEncoder().encode(text));
    st.seq = (st.seq + 1) >>> 0;
    st.dc[1].send(frame);
  },
};
// ---------------------------------------------------------------- voice

const voice = new Voice({
  talk: $('#talk'), mute: $('#mute'), volume: $('#volume'), processing: $('#voice-processing'),
  meterIn: $('#meter-in'), meterOut: $('#meter-out'), note: $('#voice-note'), parties: $('#voice-parties'),
}, (text) => showMessage(text, 'error'));
$('#talk').addEventListener('pointerdown', () => voice.talk(true));
for (const ev of ['pointerup', 'pointerleave']) $('#talk').addEventListener(ev, () => voice.talk(false));
$('#mute').addEventListener('change', () => voice.setVolume());
$('#volume').addEventListener('input', () => voice.setVolume());
$('#voice-processing').addEventListener('change', () => voice.reopenMic());
/// Audio hooks: the levels heard and said now (0..1), push-to-talk, and the audio lines'
/// WebRTC counters (inbound: packets, audio energy; outbound: packets sent).
hooks.audioLevels = () => voice.levels();
hooks.audioParties = () => voice.parties.slice();
hooks.talk = (on) => voice.talk(on);
hooks.audioStats = async () => {
  const out = { inbound: [], outbound: [] };
  if (!st.pc) return out;
  (await st.pc.getStats()).forEach((r) => {
    if (r.kind !== 'audio') return;
    if (r.type === 'inbound-rtp') out.inbound.push({ mid: r.mid, packets: r.packetsReceived, lost: r.packetsLost, energy: r.totalAudioEnergy, level: r.audioLevel });
    if (r.type === 'outbound-rtp') out.outbound.push({ mid: r.mid, packets: r.packetsSent });
  });
  return out;
};
window.fieldlink = hooks;

/// Appends to one of the hooks' lists, keeping the newest LOG_LINES.
function remember(list, item) {
  list.push(item);
  if (list.length > LOG_LINES) list.shift();
}

const tiles = [];

// ---------------------------------------------------------------- windows

function makeTiles() {
  const grid = $('#grid');
  for (let fd = 0; fd < MAX_WINDOWS; fd++) {
    const video = el('video', { autoplay: true, muted: true, playsinline: true });
    video.muted = true;
    const pick = el('select', { class: 'pick', title: 'Stream in this window', onchange: () => pickChanged(fd) });
    const tile = el('div', { class: 'tile', dataset: { fd: String(fd) } },
      el('div', { class: 'bar', draggable: 'true' },
        el('span', { class: 'q', title: 'connection quality: not scored yet' }, el('i'), el('i'), el('i'), el('i')),
        el('span', { class: 'title' }),
        pick,
        el('button', { class: 'swap', title: 'Swap with another window: press here, then on the other window', onclick: () => swapClicked(fd) }, '⇄'),
        el('button', { class: 'full', title: 'Full screen (or double-click the video)', onclick: () => fullScreen(fd) }, 'Full'),
        el('button', { class: 'close', title: 'Close (disconnect this window)', onclick: () => closeWindow(fd) }, '✕')),
      video,
      el('div', { class: 'state muted' }, 'empty'),
      el('div', { class: 'stats', hidden: true }));
    video.addEventListener('dblclick', () => fullScreen(fd));
    const bar = $('.bar', tile);
    bar.addEventListener('dragstart', (e) => {
      e.dataTransfer.setData('application/x-fieldlink-window', String(st.windowOf[fd]));
      e.dataTransfer.effectAllowed = 'move';
    });
    tile.addEventListener('dragover', (e) => {
      const t = e.dataTransfer.types;
      if (t.includes('application/x-fieldlink-stream') || t.includes('application/x-fieldlink-window')) {
        e.preventDefault();
        tile.classList.add('drop');
      }
    });
    tile.addEventListener('dragleave', () => tile.classList.remove('drop'));
    tile.addEventListener('drop', (e) => {
      e.preventDefault();
      tile.classList.remove('drop');
      const s = e.dataTransfer.getData('application/x-fieldlink-stream');
      const w = e.dataTransfer.getData('application/x-fieldlink-window');
      if (s) {
        const { gwid, stream } = JSON.parse(s);
        watch(fd, gwid, stream);
      } else if (w !== '') {
        swapWindows(Number(w), st.windowOf[fd]);
      }
    });
    countFrames(fd, video);
    grid.append(tile);
    tiles.push(tile);
  }
  layout();
}

/// Counts presented frames with requestVideoFrameCallback; tracks the longest gap and,
/// where the browser maps the frame to its capture time, the latency.
function countFrames(fd, video) {
  const onFrame = (now, meta) => {
    hooks.frames[fd]++;
    const last = hooks.lastAt[fd];
    if (last !== null) hooks.maxGapMs[fd] = Math.max(hooks.maxGapMs[fd], now - last);
    hooks.lastAt[fd] = now;
    if (meta) {
      const m = hooks.lastMedia[fd];
      // A backwards step is a new stream on this receiver, not a gap.
      if (m !== null && meta.mediaTime > m) hooks.maxMediaGapMs[fd] = Math.max(hooks.maxMediaGapMs[fd], 1000 * (meta.mediaTime - m));
      if (m !== null && meta.mediaTime < m) hooks.mediaBackwards[fd]++;
      hooks.lastMedia[fd] = meta.mediaTime;
      const r = hooks.lastReceive[fd];
      if (r !== null && meta.receiveTime !== undefined) hooks.maxReceiveGapMs[fd] = Math.max(hooks.maxReceiveGapMs[fd], meta.receiveTime - r);
      if (meta.receiveTime !== undefined) hooks.lastReceive[fd] = meta.receiveTime;
    }
    if (meta && meta.captureTime !== undefined && meta.captureTime > 0) {
      const lat = meta.expectedDisplayTime - meta.captureTime;
      if (lat >= 0 && lat < 60000) {
        const s = st.latency[fd];
        st.latency[fd] = s === undefined ? lat : s * 0.9 + lat * 0.1;
      }
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

function layout() {
  const grid = $('#grid');
  grid.className = `g${st.grid}`;
  for (let fd = 0; fd < MAX_WINDOWS; fd++) {
    const w = st.windowOf[fd];
    tiles[fd].style.order = String(w);
    tiles[fd].hidden = w >= st.grid;
    tiles[fd].dataset.window = String(w);
    $('.title', tiles[fd]).textContent = `window ${w + 1} · conn_fd ${fd}`;
  }
  for (const b of $$('#layout button')) b.classList.toggle('active', Number(b.dataset.grid) === st.grid);
}

function fdAtWindow(w) { return st.windowOf.indexOf(w); }

/// set_windows: receivers trade windows; neither stream is touched.
function swapWindows(w1, w2) {
  if (w1 === w2) return;
  const a = fdAtWindow(w1);
  const b = fdAtWindow(w2);
  st.windowOf[a] = w2;
  st.windowOf[b] = w1;
  layout();
}

function swapClicked(fd) {
  const w = st.windowOf[fd];
  if (st.swapFrom === null) {
    st.swapFrom = w;
    tiles[fd].classList.add('swap-source');
    return;
  }
  const from = st.swapFrom;
  st.swapFrom = null;
  for (const t of tiles) t.classList.remove('swap-source');
  swapWindows(from, w);
}

async function setGrid(n) {
  st.grid = n;
  layout();
  // Receivers in windows that are no longer shown stop receiving.
  const hidden = st.watching.map((w, fd) => (w && st.windowOf[fd] >= n ? fd : -1)).filter((fd) => fd >= 0);
  if (hidden.length) {
    try {
      await st.sig.request({ type: 'unwatch', conn_fds: hidden });
      for (const fd of hidden) clearWindow(fd);
    } catch (e) { fail(e); }
  }
}

function fullScreen(fd) {
  const t = tiles[fd];
  if (document.fullscreenElement === t) {
    document.exitFullscreen();
    return;
  }
  t.requestFullscreen().catch((e) => showMessage(`full screen refused by the browser: ${e.message}`));
}

function setTileState(fd, text, cls) {
  const s = $('.state', tiles[fd]);
  s.textContent = text;
  s.className = `state ${cls || 'muted'}`;
}

function clearWindow(fd) {
  st.watching[fd] = null;
  $('video', tiles[fd]).style.visibility = 'hidden';
  $('.stats', tiles[fd]).hidden = true;
  showQuality(fd, null);
  setTileState(fd, 'empty');
  renderPicks();
}

// ---------------------------------------------------------------- watching

async function watch(fd, gwid, stream) {
  if (!st.pc) return;
  const prev = st.watching[fd];
  st.watching[fd] = { gwid, stream };
  // A new stream's first frame is no gap in the old one.
  hooks.lastAt[fd] = hooks.lastMedia[fd] = hooks.lastReceive[fd] = null;
  renderPicks();
  setTileState(fd, `${gwid} · stream ${stream}: connecting…`, 'warn');
  try {
    await st.sig.request({ type: 'watch', gwid, stream_ids: [stream], conn_fds: [fd] });
    $('video', tiles[fd]).style.visibility = 'visible';
    if (!st.control) await operate(gwid);
  } catch (e) {
    st.watching[fd] = prev;
    renderPicks();
    setTileState(fd, prev ? `${prev.gwid} · stream ${prev.stream}` : 'empty');
    fail(e, `${gwid} stream ${stream}: `);
  }
}

async function closeWindow(fd) {
  if (!st.watching[fd]) return;
  try {
    await st.sig.request({ type: 'unwatch', conn_fds: [fd] });
    clearWindow(fd);
  } catch (e) { fail(e); }
}

function pickChanged(fd) {
  const v = $('.pick', tiles[fd]).value;
  if (v === '') {
    closeWindow(fd);
    return;
  }
  const i = v.lastIndexOf('#');
  watch(fd, v.slice(0, i), Number(v.slice(i + 1)));
}

/// The menus of every window: each stream of each online field device.
function renderPicks() {
  const options = [];
  for (const f of st.fields.values()) {
    for (let s = 0; s < f.streams; s++) options.push([`${f.id}#${s}`, `${f.name || f.id} · stream ${s}`]);
  }
  for (let fd = 0; fd < MAX_WINDOWS; fd++) {
    const w = st.watching[fd];
    const cur = w ? `${w.gwid}#${w.stream}` : '';
    const opts = [['', '— empty —'], ...options];
    if (cur && !opts.some(([v]) => v === cur)) opts.push([cur, `${w.gwid} · stream ${w.stream}`]);
    const pick = $('.pick', tiles[fd]);
    pick.replaceChildren(...opts.map(([v, label]) => el('option', { value: v }, label)));
    pick.value = cur;
  }
}

function onStreamState(m) {
  remember(hooks.states, m);
  const fd = m.conn_fd;
  if (fd < 0 || fd >= MAX_WINDOWS) return;
  const w = st.watching[fd];
  if (!w || w.gwid !== m.gwid || w.stream !== m.stream_id) return; // an older stream's news
  const where = `${m.gwid} · stream ${m.stream_id}`;
  if (m.state === 'playing') {
    setTileState(fd, '', 'ok');
    $('.stats', tiles[fd]).hidden = false;
    if (m.reason) showMessage(`${where}: ${m.reason}`, 'info');
  } else if (m.state === 'connecting') {
    setTileState(fd, `${where}: connecting…`, 'warn');
  } else if (m.state === 'failed') {
    setTileState(fd, `${where}: ${m.reason || 'cannot play now'} (resumes by itself)`, 'bad');
  } else if (m.state === 'disconnected') {
    clearWindow(fd);
    if (m.reason) setTileState(fd, `${where}: ${m.reason}`, 'muted');
  }
}

// ---------------------------------------------------------------- field devices

async function listFields() {
  try {
    const m = await st.sig.request({ type: 'list_fields' });
    const manual = [...st.fields.values()].filter((f) => f.manual);
    st.fields = new Map(m.fields.map((f) => [f.id, f]));
    // A field device opened by id keeps the stream count the operator gave until the
    // server knows better (it is offline or its media is not up yet).
    for (const f of manual) {
      const listed = st.fields.get(f.id);
      if (!listed) st.fields.set(f.id, f);
      else if (listed.streams === 0) st.fields.set(f.id, { ...listed, streams: f.streams, manual: true });
    }
    $('#fields-note').textContent = m.fields.length ? '' : 'No field devices in this project yet.';
  } catch (e) {
    if (e.name === 'FIELD_LIST_DISABLED') $('#fields-note').textContent = explain(e);
    else fail(e);
  }
  renderFields();
  renderPicks();
}

let listTimer;
/// Presence changes: the stream count comes with the list, once media is up.
function refreshFieldsSoon() {
  clearTimeout(listTimer);
  listTimer = setTimeout(listFields, 300);
  setTimeout(listFields, 2000);
}

function renderFields() {
  const ul = $('#fields');
  ul.replaceChildren(...[...st.fields.values()].map((f) => {
    const chips = [];
    for (let s = 0; s < f.streams; s++) {
      const chip = el('span', { class: 'chip', draggable: 'true', title: 'Drag onto a window, or click for the first empty one', dataset: { gwid: f.id, stream: String(s) } }, `stream ${s}`);
      chip.addEventListener('dragstart', (e) => {
        e.dataTransfer.setData('application/x-fieldlink-stream', JSON.stringify({ gwid: f.id, stream: s }));
        e.dataTransfer.effectAllowed = 'copy';
      });
      chip.addEventListener('click', () => {
        const free = [...Array(st.grid).keys()].map(fdAtWindow).find((fd) => !st.watching[fd]);
        watch(free === undefined ? fdAtWindow(0) : free, f.id, s);
      });
      chips.push(chip);
    }
    return el('li', { class: f.id === st.control ? 'selected' : '', dataset: { id: f.id } },
      el('div', { class: 'head' },
        el('span', { class: `dot ${f.online ? 'on' : 'off'}`, title: f.online ? 'online' : 'offline' }),
        el('span', { class: 'name', title: f.id }, f.name && f.name !== f.id ? `${f.name} (${f.id})` : f.id),
        el('button', { class: 'operate', title: 'Operate this field device (control panel)', onclick: () => operate(f.id) }, 'Operate')),
      el('div', { class: 'streams' }, chips.length ? chips : el('span', { class: 'muted' }, f.online ? 'no video yet' : 'offline')));
  }));
}

/// Opens a session with a field device and points the control panel at it.
async function operate(gwid) {
  try {
    await st.sig.request({ type: 'connect', gwid });
    st.control = gwid;
    renderFields();
    renderBanner();
  } catch (e) { fail(e, `${gwid}: `); }
}

// ---------------------------------------------------------------- permission and control

function isMaster() {
  const p = st.control && st.perms.get(st.control);
  return Boolean(p && p.self === 1);
}

function renderBanner() {
  const b = $('#banner');
  const f = st.control;
  const master = isMaster();
  for (const id of ['#send', '#send-text', '#input-on']) $(id).disabled = !master;
  $('#diagnose').disabled = !f || st.diagnosing;
  $('#request-master').disabled = !f || master;
  $('#release-master').disabled = !master;
  if (!f) {
    b.className = '';
    b.textContent = 'Open a field device to operate it.';
    return;
  }
  const p = st.perms.get(f);
  const online = st.fields.get(f)?.online;
  const who = p && p.master;
  b.className = master ? 'master' : 'guest';
  b.replaceChildren(
    el('div', {}, el('b', {}, f), online === false ? el('span', { class: 'bad' }, ' (offline)') : ''),
    el('div', {}, 'master: ', el('span', { class: 'who' }, who ? (who === st.creds.device ? `${who} (you)` : who) : 'nobody')),
    el('div', { class: 'muted' }, master ? 'You control this field device.' : 'You are a guest: you watch and receive reports, you cannot send.'));
  if (!master) setInput(false);
}

function onPermission(m) {
  const before = st.perms.get(m.field_id);
  st.perms.set(m.field_id, { self: m.self_permission, master: m.master_id });
  if (m.field_id === st.control) {
    renderBanner();
    if (before && before.self === 1 && m.self_permission === 0) {
      showMessage(`${m.field_id}: master passed to ${m.master_id || 'nobody'}; you are a guest now.`, 'info');
    }
  }
}

async function requestLevel(level) {
  try {
    await st.sig.request({ type: 'request_permission', gwid: st.control, level });
    if (level === 1 && !isMaster()) showMessage(`Asked ${st.control} for master; the field device decides.`, 'info');
  } catch (e) { fail(e, `${st.control}: `); }
}

/// Sends control data to the operated field device; throws ControlError when it cannot.
function sendControl(bytes, qos) {
  if (!st.control) throw new ControlError('NOT_IN_SESSION', 'open a field device first');
  if (!isMaster()) throw new ControlError('NOT_MASTER', 'you are not master of this field device');
  const dc = st.dc[qos];
  if (!dc || dc.readyState !== 'open') throw new ControlError('MEDIA_NOT_READY', 'the control channel is not open yet');
  if (!st.rate.tryAcquire()) throw new ControlError('RATE_LIMITED', 'more than 100 control messages in one second');
  const frame = encodeFrame(st.control, st.seq, bytes);
  st.seq = (st.seq + 1) >>> 0;
  if (qos === 0 && dc.bufferedAmount > LOSSY_BUFFER_LIMIT) return false; // never late
  dc.send(frame);
  return true;
}

function sendBox() {
  const text = $('#send-text').value;
  const qos = Number($('#send-qos').value);
  let bytes;
  if ($('#send-format').value === 'hex') {
    const digits = text.replace(/\s+/g, '');
    if (!/^([0-9a-fA-F]{2})+$/.test(digits)) {
      showMessage('hex needs pairs of digits 0-9 a-f, e.g. "01 ff 10"');
      return;
    }
    bytes = new Uint8Array(digits.match(/../g).map((h) => parseInt(h, 16)));
  } else {
    bytes = new TextEncoder().encode(text);
  }
  try {
    sendControl(bytes, qos);
    logLine(st.control, bytes, qos, true);
  } catch (e) { fail(e); }
}

function logLine(peer, bytes, qos, sent) {
  const log = $('#log');
  const t = new Date().toLocaleTimeString();
  const li = el('li', { class: sent ? 'sent' : '' },
    el('div', { class: 'meta' }, `${t} ${sent ? '→' : '←'} ${peer} qos ${qos} · ${bytes.length} B`),
    el('div', { class: 'text' }, printable(bytes)),
    el('div', { class: 'hex meta' }, hex(bytes)));
  log.append(li);
  while (log.children.length > LOG_LINES) log.firstChild.remove();
  log.scrollTop = log.scrollHeight;
}

function onControlFrame(qos, data) {
  const f = decodeFrame(data);
  if (!f) return;
  if (qos === 0 && !st.late.accept(f.peer, f.seq)) return;
  remember(hooks.reports, { from: f.peer, qos, text: printable(f.payload), hex: hex(f.payload) });
  logLine(f.peer, f.payload, qos, false);
}

// Keyboard and gamepad: the held keys and pad state go out at the chosen rate.
function setInput(on) {
  const box = $('#input-on');
  box.checked = on;
  clearInterval(st.inputTimer);
  st.inputTimer = null;
  if (!on) return;
  const rate = Math.min(100, Math.max(1, Number($('#input-rate').value)));
  st.inputTimer = setInterval(inputTick, 1000 / rate);
}

function inputTick() {
  const qos = Number($('#input-qos').value);
  const pad = st.input.gamepad();
  $('#input-state').textContent = `keys: ${[...st.input.keys].join(' ') || 'none'} · gamepad: ${pad ? pad.id : 'none'}`;
  try {
    sendControl(st.input.payload(), qos);
  } catch (e) {
    setInput(false);
    fail(e);
  }
}

function typing(target) {
  return target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement
    || (target instanceof HTMLInputElement && target.type !== 'checkbox');
}

window.addEventListener('keydown', (e) => {
  if (e.code === TALK_KEY && !typing(e.target)) {
    if (!e.repeat) voice.talk(true);
    e.preventDefault();
    return;
  }
  if (!st.inputTimer || typing(e.target)) return;
  st.input.keydown(e.code);
  if (e.code.startsWith('Arrow') || e.code === 'Space') e.preventDefault();
});
window.addEventListener('keyup', (e) => {
  if (e.code === TALK_KEY) voice.talk(false);
  st.input.keyup(e.code);
});
window.addEventListener('blur', () => st.input.clear());

// ---------------------------------------------------------------- stats overlay

async function updateStats() {
  if (!st.pc) return;
  let report;
  try { report = await st.pc.getStats(); } catch { return; }
  let rtt;
  for (const s of report.values()) {
    if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime * 1000;
  }
  const mids = st.transceivers.map((t) => t.mid);
  for (const s of report.values()) {
    if (s.type !== 'inbound-rtp' || s.kind !== 'video') continue;
    const fd = mids.indexOf(s.mid);
    if (fd < 0 || !st.watching[fd]) continue;
    const prev = st.prevStats.get(fd);
    st.prevStats.set(fd, s);
    if (!prev) continue;
    const dt = (s.timestamp - prev.timestamp) / 1000;
    if (dt <= 0) continue;
    const fps = (s.framesDecoded - prev.framesDecoded) / dt;
    const kbps = ((s.bytesReceived - prev.bytesReceived) * 8) / dt / 1000;
    const lost = (s.packetsLost || 0) - (prev.packetsLost || 0);
    const got = s.packetsReceived - prev.packetsReceived;
    const loss = got + lost > 0 ? (100 * Math.max(0, lost)) / (got + lost) : 0;
    let lat = st.latency[fd];
    let approx = '';
    if (lat === undefined) {
      // Receiver-side estimate: half the round trip, jitter buffer and decoding.
      const emitted = (s.jitterBufferEmittedCount || 0) - (prev.jitterBufferEmittedCount || 0);
      const jb = emitted > 0 ? (1000 * (s.jitterBufferDelay - prev.jitterBufferDelay)) / emitted : 0;
      const frames = s.framesDecoded - prev.framesDecoded;
      const dec = frames > 0 ? (1000 * (s.totalDecodeTime - prev.totalDecodeTime)) / frames : 0;
      lat = (rtt || 0) / 2 + jb + dec;
      approx = '~';
    }
    const box = $('.stats', tiles[fd]);
    box.textContent = `${fps.toFixed(1)} fps  ${Math.round(kbps)} kbit/s  ${s.frameWidth || '?'}x${s.frameHeight || '?'}\n`
      + `loss ${loss.toFixed(1)}%  rtt ${rtt === undefined ? '?' : Math.round(rtt)} ms  latency ${approx}${Math.round(lat)} ms`;
    box.dataset.fps = fps.toFixed(1);
    box.dataset.kbps = String(Math.round(kbps));
  }
}

// ---------------------------------------------------------------- quality and diagnosis

function showQuality(fd, m) {
  const q = $('.q', tiles[fd]);
  hooks.quality[fd] = m ? m.level : null;
  if (!m) {
    delete q.dataset.level;
    q.title = 'connection quality: not scored yet';
    return;
  }
  q.dataset.level = m.level;
  const figures = [`${m.fps} of ${m.source_fps} fps`];
  if (m.loss_pct !== undefined) figures.push(`loss ${m.loss_pct}%`);
  if (m.rtt_ms !== undefined) figures.push(`rtt ${Math.round(m.rtt_ms)} ms`);
  if (m.jitter_ms !== undefined) figures.push(`jitter ${Math.round(m.jitter_ms)} ms`);
  q.title = `connection quality: ${m.level}${m.cause ? ` (${m.cause})` : ''}\n${figures.join(', ')}`;
}

function onQuality(m) {
  const w = st.watching[m.conn_fd];
  if (!w || w.gwid !== m.gwid || w.stream !== m.stream_id) return; // about a stream it left
  showQuality(m.conn_fd, m);
}

/// This console's receivers' inbound video stats by conn_fd, and the round trip.
async function inboundByFd() {
  const byFd = new Map();
  let rtt = null;
  const report = await st.pc.getStats();
  const mids = st.transceivers.map((t) => t.mid);
  for (const s of report.values()) {
    if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime * 1000;
    if (s.type !== 'inbound-rtp' || s.kind !== 'video') continue;
    const fd = mids.indexOf(s.mid);
    if (fd >= 0) byFd.set(fd, s);
  }
  return { byFd, rtt };
}

/// The server asks this console to measure its receivers for a diagnosis (the console is
/// the remote side): counters now, again after the window, the differences to the server.
async function onDiagStart(m) {
  if (!st.pc) return;
  const pc = st.pc;
  const start = await inboundByFd();
  const t0 = performance.now();
  setTimeout(async () => {
    if (st.pc !== pc || !st.sig) return; // reconnected meanwhile: the server gave up on it
    const end = await inboundByFd();
    const seconds = (performance.now() - t0) / 1000;
    const remote = m.conn_fds.map((fd) => {
      const a = start.byFd.get(fd) || {};
      const b = end.byFd.get(fd) || {};
      const d = (k) => Math.max(0, (b[k] || 0) - (a[k] || 0));
      const lost = d('packetsLost');
      const got = d('packetsReceived');
      return {
        conn_fd: fd, seconds, frames_in: d('framesReceived'), frames_out: d('framesReceived'),
        decoded: d('framesDecoded'), dropped: d('framesDropped'), bytes: d('bytesReceived'),
        loss_pct: got + lost > 0 ? (100 * lost) / (got + lost) : null,
        rtt_ms: end.rtt, latency_ms: st.latency[fd] ?? null,
      };
    });
    try {
      await st.sig.request({ type: 'diag_report', diag: m.diag, remote });
    } catch (e) { fail(e, 'Diagnosis: '); }
  }, m.window_ms);
}

async function diagnose() {
  const gwid = st.control;
  if (!gwid) return;
  st.diagnosing = true;
  renderBanner();
  $('#diag-state').textContent = 'measuring for 10 s…';
  try {
    await st.sig.request({ type: 'diagnose', gwid });
  } catch (e) {
    st.diagnosing = false;
    renderBanner();
    $('#diag-state').textContent = '';
    fail(e, `Diagnosis of ${gwid}: `);
  }
}

function onDiagnosis(m) {
  st.diagnosing = false;
  renderBanner();
  remember(hooks.diagnoses, m);
  $('#diag-state').textContent = m.kind === 1 ? `done, ${new Date().toLocaleTimeString()}` : 'failed';
  renderReport($('#diagnosis'), m);
}

// ---------------------------------------------------------------- connection

function setSig(text, cls) {
  const s = $('#sig-state');
  s.textContent = text;
  s.className = cls;
}

function setMedia() {
  const s = $('#media-state');
  const c = st.pc ? st.pc.connectionState : '—';
  s.textContent = c;
  s.className = c === 'connected' ? 'ok' : c === 'failed' || c === 'disconnected' ? 'bad' : 'warn';
}

function fail(e, prefix = '') {
  const err = e instanceof ServerError || e instanceof ControlError ? e : { name: 'ERROR', message: String(e && e.message ? e.message : e) };
  remember(hooks.errors, { name: err.name, message: err.message });
  showMessage(prefix + explain(err));
}

function onEvent(m) {
  switch (m.type) {
    case 'stream_state': onStreamState(m); break;
    case 'quality': onQuality(m); break;
    case 'diag_start': onDiagStart(m); break;
    case 'audio_line': voice.heardOn(m.line, m.stream_id === undefined ? m.gwid : `${m.gwid} #${m.stream_id}`); break;
    case 'diag_result': onDiagnosis(m); break;
    case 'permission': onPermission(m); break;
    case 'presence': {
      const f = st.fields.get(m.field_id);
      if (f) { f.online = m.online; if (!m.online) f.streams = f.manual ? f.streams : 0; }
      renderFields();
      renderPicks();
      if (m.field_id === st.control) renderBanner();
      refreshFieldsSoon();
      break;
    }
    case 'warning':
      remember(hooks.errors, { name: m.name, message: m.message });
      showMessage(`The server refused something sent: ${explain(m)}`);
      break;
    case 'error':
      st.lastConnError = m;
      remember(hooks.errors, { name: m.name, message: m.message });
      showMessage(explain(m));
      break;
    default: break;
  }
}

async function setupMedia() {
  const pc = new RTCPeerConnection();
  st.pc = pc;
  st.dc = QOS_LABELS.map((label, qos) => {
    const dc = pc.createDataChannel(label, qos === 0 ? { ordered: false, maxRetransmits: 0 } : {});
    dc.binaryType = 'arraybuffer';
    dc.onmessage = (ev) => onControlFrame(qos, ev.data);
    return dc;
  });
  st.transceivers = [...Array(MAX_WINDOWS).keys()].map(() => pc.addTransceiver('video', { direction: 'recvonly' }));
  voice.attach(pc);
  pc.ontrack = (ev) => {
    if (voice.ontrack(ev)) return;
    const fd = st.transceivers.findIndex((t) => t.receiver.track === ev.track);
    if (fd >= 0) $('video', tiles[fd]).srcObject = new MediaStream([ev.track]);
  };
  pc.onconnectionstatechange = setMedia;
  setMedia();
  await pc.setLocalDescription(await pc.createOffer());
  const answer = await st.sig.request({
    type: 'offer', sdp: pc.localDescription.sdp, video_mids: st.transceivers.map((t) => t.mid), ...voice.offer(),
  });
  await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
}

function teardown() {
  setInput(false);
  voice.close();
  if (st.sig) st.sig.close();
  if (st.pc) st.pc.close();
  st.sig = null;
  st.pc = null;
  st.dc = [null, null];
  st.prevStats.clear();
  st.latency.fill(undefined);
  st.diagnosing = false;
  setMedia();
}

/// Logs in, sets up media, lists field devices and (after a reconnect) restores windows.
async function start() {
  const sig = new Signal(onEvent, onSignalClosed);
  st.sig = sig;
  st.lastConnError = null;
  setSig('connecting…', 'warn');
  await sig.open();
  await sig.request({ type: 'login', version: 1, device_id: st.creds.device, password: st.creds.password, role: 'remote', auto_permission: false });
  setSig('logged in', 'ok');
  $('#who').textContent = st.creds.device;
  await setupMedia();
  await listFields();
  const restore = st.watching.map((w, fd) => [w, fd]).filter(([w]) => w);
  for (const [w, fd] of restore) await watch(fd, w.gwid, w.stream);
  if (st.control) await operate(st.control);
  st.reconnectTry = 0;
}

function onSignalClosed(ev) {
  const why = st.lastConnError ? explain(st.lastConnError) : `closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})`;
  teardown();
  setSig('lost', 'bad');
  if (st.lastConnError && st.lastConnError.name === 'REPLACED') {
    showMessage(`Signalling ended: ${why}`, 'error', ['Log in again', reconnect]);
    return;
  }
  const delay = RECONNECT_DELAYS_MS[Math.min(st.reconnectTry, RECONNECT_DELAYS_MS.length - 1)];
  st.reconnectTry++;
  showMessage(`Signalling lost: ${why}. Reconnecting in ${delay / 1000} s…`, 'error', ['Reconnect now', reconnect]);
  st.reconnectTimer = setTimeout(reconnect, delay);
}

async function reconnect() {
  clearTimeout(st.reconnectTimer);
  teardown();
  try {
    await start();
    showMessage('Reconnected.', 'info');
  } catch (e) {
    teardown();
    onSignalClosed({ code: 0, reason: e.message });
  }
}

async function login(ev) {
  ev.preventDefault();
  const fd = new FormData(ev.target);
  st.creds = { device: String(fd.get('device')).trim(), password: String(fd.get('password')) };
  voice.ensureContext(); // in the gesture, so the field devices are heard at once
  clearMessage();
  $('#login button').disabled = true;
  try {
    await start();
    $('#login').hidden = true;
    $('#operate').hidden = false;
    $('#layout').hidden = false;
    $('#logout').hidden = false;
  } catch (e) {
    teardown();
    setSig('not connected', 'muted');
    fail(e, 'Login failed: ');
  } finally {
    $('#login button').disabled = false;
  }
}

function logout() {
  clearTimeout(st.reconnectTimer);
  teardown();
  st.watching.fill(null);
  st.control = null;
  st.perms.clear();
  st.fields.clear();
  for (let fd = 0; fd < MAX_WINDOWS; fd++) clearWindow(fd);
  renderBanner();
  setSig('not connected', 'muted');
  $('#who').textContent = '';
  $('#operate').hidden = true;
  $('#layout').hidden = true;
  $('#logout').hidden = true;
  $('#login').hidden = false;
}

// ---------------------------------------------------------------- wiring

makeTiles();
for (let fd = 0; fd < MAX_WINDOWS; fd++) clearWindow(fd);
renderBanner();
$('#login').addEventListener('submit', login);
$('#logout').addEventListener('click', logout);
for (const b of $$('#layout button')) b.addEventListener('click', () => setGrid(Number(b.dataset.grid)));
$('#refresh').addEventListener('click', listFields);
$('#request-master').addEventListener('click', () => requestLevel(1));
$('#diagnose').addEventListener('click', diagnose);
$('#release-master').addEventListener('click', () => requestLevel(0));
$('#send').addEventListener('click', sendBox);
$('#send-text').addEventListener('keydown', (e) => { if (e.key === 'Enter') sendBox(); });
$('#input-on').addEventListener('change', (e) => setInput(e.target.checked));
$('#input-rate').addEventListener('change', () => setInput($('#input-on').checked));
$('#clear-log').addEventListener('click', () => $('#log').replaceChildren());
$('#open-field').addEventListener('submit', (e) => {
  e.preventDefault();
  const fd = new FormData(e.target);
  const id = String(fd.get('gwid')).trim();
  if (!/^[^/\s]+\/[^/\s]+$/.test(id)) { showMessage('A field device id is written project/device.'); return; }
  st.fields.set(id, { id, name: id, online: true, streams: Math.min(64, Math.max(1, Number(fd.get('streams')))), manual: true });
  renderFields();
  renderPicks();
  operate(id);
});
$('#session-code').addEventListener('submit', async (e) => {
  e.preventDefault();
  const fd = new FormData(e.target);
  try {
    await st.sig.request({ type: 'set_session_token', field_id: String(fd.get('field')).trim(), code: String(fd.get('code')).trim() });
    showMessage('Authorization code set.', 'info');
  } catch (err) { fail(err, 'Authorization code: '); }
});
setInterval(updateStats, 1000);
