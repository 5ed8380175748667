// Room chat in the page, on reliable room messages (docs/protocol.md, Room messages):
// topic "chat", payload {text}. The server numbers each message (data_seq) and replays
// what this page has not seen on join (the room's kept history: data_since 0) and on
// resume (after the last one shown), so the panel shows every message once, in the
// room's order. Messages of other topics are not the chat's.

const TOPIC = "chat";
const MAX_TEXT = 2000; // characters per message (the server allows 64 KiB)
const LINES_LIMIT = 500; // lines kept in the panel
const ACK_DELAY_MS = 200; // a burst of messages is acknowledged once

// crypto.randomUUID exists in secure contexts only (https, loopback).
function newId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
}

export class Chat {
  // request(type, fields) -> Promise of the reply (the current signaling connection).
  constructor({ request }) {
    this.request = request;
    this.cursor = null; // data_seq of the newest message shown
    this.acked = 0;
    this.ackTimer = null;
    this.panel = document.getElementById("chat");
    this.list = document.getElementById("chat-lines");
    this.form = document.getElementById("chat-form");
    this.input = document.getElementById("chat-input");
    this.button = document.getElementById("chat-toggle");
    this.form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.sendText(this.input.value).catch(() => {});
    });
  }

  // Fields for join and resume: what to replay.
  since() {
    return { data_since: this.cursor ?? 0 };
  }

  // After join: a token without canPublishData reads the chat but cannot write.
  joined(canSend) {
    this.input.disabled = !canSend;
    this.input.placeholder = canSend ? "message" : "read only (no canPublishData)";
  }

  onData(msg) {
    if (msg.topic !== TOPIC || typeof msg.data_seq !== "number") return;
    if (this.cursor !== null && msg.data_seq <= this.cursor) return; // already shown
    this.cursor = msg.data_seq;
    const text = msg.payload && typeof msg.payload.text === "string" ? msg.payload.text : JSON.stringify(msg.payload ?? "");
    const li = document.createElement("li");
    li.dataset.seq = String(msg.data_seq);
    li.innerHTML = "<time></time> <b></b> <span></span>";
    li.querySelector("time").textContent = new Date(msg.ts).toLocaleTimeString();
    li.querySelector("b").textContent = `${msg.name || msg.from}:`;
    li.querySelector("span").textContent = text;
    this.list.appendChild(li);
    while (this.list.children.length > LINES_LIMIT) this.list.firstElementChild.remove();
    this.list.scrollTop = this.list.scrollHeight;
    if (this.panel.hidden) this.button.classList.add("unread");
    this.ackSoon();
  }

  ackSoon() {
    if (this.ackTimer !== null) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      const seq = this.cursor;
      if (seq === null || seq <= this.acked) return;
      this.request("data_ack", { data_seq: seq }).then(
        () => (this.acked = Math.max(this.acked, seq)),
        () => {}, // the connection is down: acknowledged after the resume
      );
    }, ACK_DELAY_MS);
  }

  async sendText(raw) {
    const text = String(raw).trim().slice(0, MAX_TEXT);
    if (!text) return null;
    this.input.value = "";
    try {
      // data_id: a retry of this very message (after a reconnect) is stored once.
      return await this.request("send_data", { topic: TOPIC, payload: { text }, data_id: newId() });
    } catch (e) {
      this.input.value = text; // not sent: keep it for another try
      throw e;
    }
  }

  togglePanel() {
    this.panel.hidden = !this.panel.hidden;
    this.button.setAttribute("aria-pressed", String(!this.panel.hidden));
    if (!this.panel.hidden) {
      this.button.classList.remove("unread");
      this.input.focus();
    }
  }

  // Lines shown, oldest first (test hook).
  lines() {
    return [...this.list.children].map((li) => ({
      seq: Number(li.dataset.seq),
      name: li.querySelector("b").textContent.replace(/:$/, ""),
      text: li.querySelector("span").textContent,
    }));
  }

  reset() {
    this.list.replaceChildren();
    this.cursor = null;
    this.acked = 0;
    if (this.ackTimer !== null) clearTimeout(this.ackTimer);
    this.ackTimer = null;
    this.button.classList.remove("unread");
  }
}
