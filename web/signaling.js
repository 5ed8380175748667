// Signaling: requests with replies (by id) and server events over the transport of
// web/transport.js (WebTransport or WebSocket); docs/protocol.md.

import { $, params, status } from "./state.js";
import { connectSignaling } from "./transport.js";

export const PROTOCOL_VERSION = 1;

export class FerryError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

export class Signaling {
  constructor(url, onEvent, onClose) {
    this.url = url;
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.nextId = 1;
    this.pending = new Map();
    this.conn = null; // {kind, send, close, isOpen} from transport.js
  }

  get kind() {
    return this.conn ? this.conn.kind : null;
  }

  async open() {
    try {
      this.conn = await connectSignaling({
        wsUrl: this.url,
        force: params.get("transport"),
        onMessage: (text) => this.handle(text),
        onClose: (ev) => {
          for (const { reject: rej } of this.pending.values()) rej(new FerryError("closed", "signaling socket closed"));
          this.pending.clear();
          this.onClose(ev);
        },
      });
    } catch (e) {
      throw new FerryError("closed", `cannot open signaling: ${e.message || e}`);
    }
    const label = $("transport");
    if (label) {
      label.textContent = this.conn.kind === "webtransport" ? "WebTransport" : "WebSocket";
      label.dataset.transport = this.conn.kind;
    }
  }

  handle(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      status("server sent invalid JSON", true);
      return;
    }
    if (msg.id !== undefined && msg.id !== null) {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg);
      else p.reject(new FerryError(msg.error?.code || "unknown", msg.error?.message || ""));
      return;
    }
    this.onEvent(msg);
  }

  request(type, fields = {}, timeoutMs = 10000) {
    if (!this.conn || !this.conn.isOpen()) {
      return Promise.reject(new FerryError("closed", "not connected"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new FerryError("timeout", `no reply to ${type}`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.conn.send(JSON.stringify({ ...fields, type, id }));
    });
  }

  close() {
    if (this.conn) this.conn.close();
  }
}
