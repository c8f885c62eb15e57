// Control data in the browser (docs/protocol.md, "Peer connection and control data"):
// the binary frame on the data channels, the sender's limits (700 bytes, 100 messages in
// any second), the qos 0 late filter, and the operator's input (keyboard and gamepad)
// as one JSON message per tick.

export const MAX_CONTROL_BYTES = 700;
export const MAX_CONTROL_RATE = 100;
const MAX_PEER_ID = 129;
const FRAME_VERSION = 1;

export class ControlError extends Error {
  constructor(name, message) { super(message); this.name = name; }
}

export function encodeFrame(peer, seq, payload) {
  const id = new TextEncoder().encode(peer);
  if (id.length > MAX_PEER_ID) throw new ControlError('BAD_REQUEST', 'field device id too long');
  if (payload.length === 0) throw new ControlError('BAD_REQUEST', 'nothing to send');
  if (payload.length > MAX_CONTROL_BYTES) {
    throw new ControlError('MESSAGE_TOO_LARGE', `${payload.length} bytes: a control message is at most ${MAX_CONTROL_BYTES} bytes`);
  }
  const buf = new Uint8Array(6 + id.length + payload.length);
  buf[0] = FRAME_VERSION;
  buf[1] = id.length;
  buf.set(id, 2);
  new DataView(buf.buffer).setUint32(2 + id.length, seq >>> 0);
  buf.set(payload, 6 + id.length);
  return buf;
}

/// {peer, seq, payload} or null for a frame that breaks the format.
export function decodeFrame(buf) {
  const b = new Uint8Array(buf);
  if (b.length < 2 || b[0] !== FRAME_VERSION || b[1] > MAX_PEER_ID) return null;
  const n = b[1];
  if (b.length < 2 + n + 4) return null;
  let peer;
  try { peer = new TextDecoder('utf-8', { fatal: true }).decode(b.subarray(2, 2 + n)); } catch { return null; }
  const seq = new DataView(b.buffer, b.byteOffset).getUint32(2 + n);
  const payload = b.subarray(6 + n);
  if (payload.length === 0 || payload.length > MAX_CONTROL_BYTES) return null;
  return { peer, seq, payload };
}

/// Qos 0: drop a message that is not newer than the last delivered from its sender
/// (serial-number arithmetic, as the SDK does).
export class LateFilter {
  constructor() { this.last = new Map(); }
  accept(sender, seq) {
    const last = this.last.get(sender);
    if (last !== undefined) {
      const d = (seq - last) >>> 0;
      if (d === 0 || d > 0x7fffffff) return false;
    }
    this.last.set(sender, seq);
    return true;
  }
}

/// At most `limit` messages in any `windowMs`.
export class RateLimiter {
  constructor(limit = MAX_CONTROL_RATE, windowMs = 1000) {
    this.limit = limit;
    this.windowMs = windowMs;
    this.sent = [];
  }
  tryAcquire(now = performance.now()) {
    while (this.sent.length && now - this.sent[0] >= this.windowMs) this.sent.shift();
    if (this.sent.length >= this.limit) return false;
    this.sent.push(now);
    return true;
  }
}

/// Keys held now (KeyboardEvent.code) and the first gamepad's state, as the payload
/// sent at every input tick:
/// {"keys":["KeyW","ShiftLeft"],"axes":[-0.5,0,0,1],"buttons":[0,1,0,...]}
/// (axes and buttons only while a gamepad is connected; values rounded to 0.01).
export class InputState {
  constructor() {
    this.keys = new Set();
    this.maxKeys = 16;
  }

  keydown(code) { if (this.keys.size < this.maxKeys) this.keys.add(code); }
  keyup(code) { this.keys.delete(code); }
  clear() { this.keys.clear(); }

  gamepad() {
    const pads = navigator.getGamepads ? navigator.getGamepads() : [];
    return [...pads].find((p) => p && p.connected) || null;
  }

  payload() {
    const msg = { keys: [...this.keys] };
    const pad = this.gamepad();
    if (pad) {
      const r = (v) => Math.round(v * 100) / 100;
      msg.axes = pad.axes.slice(0, 8).map(r);
      msg.buttons = pad.buttons.slice(0, 24).map((b) => r(b.value));
    }
    return new TextEncoder().encode(JSON.stringify(msg));
  }
}
