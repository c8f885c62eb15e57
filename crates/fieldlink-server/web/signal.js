// The signalling client, as in docs/protocol.md: JSON text frames on a WebSocket at
// /ws. A request carries `req` and is settled by the answer with the same `req` (an
// `error` rejects it); every other message is an event for `onevent`.

import { ServerError } from './common.js';

const REQUEST_TIMEOUT_MS = 10000;

export class Signal {
  constructor(onevent, onclose) {
    this.onevent = onevent;
    this.onclose = onclose;
    this.nextReq = 1;
    this.pending = new Map();
    this.ws = null;
  }

  /// Opens the socket; resolves when open.
  open() {
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      this.ws = ws;
      let opened = false;
      ws.onopen = () => { opened = true; resolve(); };
      ws.onmessage = (ev) => this.receive(ev.data);
      ws.onclose = (ev) => {
        for (const p of this.pending.values()) {
          clearTimeout(p.timer);
          p.reject(new ServerError({ name: 'DISCONNECTED', message: 'signalling connection closed' }));
        }
        this.pending.clear();
        if (!opened) reject(new ServerError({ name: 'DISCONNECTED', message: `cannot reach the server at ${url}` }));
        else this.onclose(ev);
      };
    });
  }

  get isOpen() { return this.ws && this.ws.readyState === WebSocket.OPEN; }

  receive(text) {
    let m;
    try { m = JSON.parse(text); } catch { return; }
    const p = m.req !== undefined && m.req !== null ? this.pending.get(m.req) : undefined;
    if (p) {
      this.pending.delete(m.req);
      clearTimeout(p.timer);
      if (m.type === 'error') p.reject(new ServerError(m));
      else p.resolve(m);
    } else {
      this.onevent(m);
    }
  }

  /// Sends a request and waits for its answer.
  request(msg) {
    if (!this.isOpen) return Promise.reject(new ServerError({ name: 'DISCONNECTED', message: 'not connected to the server' }));
    const req = this.nextReq++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(req);
        reject(new ServerError({ name: 'TIMEOUT', message: `no answer to ${msg.type}` }));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(req, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...msg, req }));
    });
  }

  close() {
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close();
    }
    for (const p of this.pending.values()) clearTimeout(p.timer);
    this.pending.clear();
  }
}
