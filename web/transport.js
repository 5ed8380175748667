// Signaling transports for the browser client: WebTransport (HTTP/3 over QUIC) when the
// browser has it, else WebSocket. Both carry the same JSON messages (docs/protocol.md);
// on WebTransport they are length-prefixed frames (4-byte big-endian length, then UTF-8
// JSON) on one bidirectional stream, and the server may send unreliable room messages
// as datagrams.
//
// connectSignaling({wsUrl, force, onMessage, onClose}) resolves to a connection
// {kind: "webtransport" | "ws", send(text), close(), isOpen()}. `force` ("ws" or
// "webtransport", from ?transport=) picks one; otherwise WebTransport is tried first and
// WebSocket is used when WebTransport is missing or fails to connect.

const WT_TIMEOUT_MS = 4000;
const MAX_FRAME = 4 * 1024 * 1024;

function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function openWebSocket(url, onMessage, onClose) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let opened = false;
    ws.onopen = () => {
      opened = true;
      resolve({
        kind: "ws",
        send: (text) => ws.send(text),
        close: () => {
          if (ws.readyState <= WebSocket.OPEN) ws.close();
        },
        isOpen: () => ws.readyState === WebSocket.OPEN,
      });
    };
    ws.onerror = () => {
      if (!opened) reject(new Error(`cannot open ${url}`));
    };
    ws.onmessage = (ev) => onMessage(ev.data);
    ws.onclose = (ev) => {
      if (opened) onClose(ev);
    };
  });
}

async function openWebTransport(onMessage, onClose) {
  const res = await fetch("/api/webtransport");
  if (!res.ok) throw new Error(`/api/webtransport: ${res.status}`);
  const info = await res.json();
  const options = info.generated
    ? { serverCertificateHashes: [{ algorithm: "sha-256", value: hexToBytes(info.certificate_sha256) }] }
    : {};
  const wt = new WebTransport(info.url, options);
  await withTimeout(wt.ready, WT_TIMEOUT_MS, "WebTransport");
  const stream = await wt.createBidirectionalStream();
  const writer = stream.writable.getWriter();
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  let open = true;
  let closedOnce = false;
  const closed = (why) => {
    open = false;
    if (!closedOnce) {
      closedOnce = true;
      onClose({ reason: String(why || "closed") });
    }
  };
  (async () => {
    const reader = stream.readable.getReader();
    let buf = new Uint8Array(0);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const joined = new Uint8Array(buf.length + value.length);
        joined.set(buf);
        joined.set(value, buf.length);
        buf = joined;
        while (buf.length >= 4) {
          const len = new DataView(buf.buffer, buf.byteOffset, 4).getUint32(0);
          if (len > MAX_FRAME) throw new Error(`frame of ${len} bytes`);
          if (buf.length < 4 + len) break;
          onMessage(decoder.decode(buf.subarray(4, 4 + len)));
          buf = buf.slice(4 + len);
        }
      }
    } catch (e) {
      closed(e);
      return;
    }
    closed("stream ended");
  })();
  // Unreliable room messages may come as datagrams, one JSON message each.
  (async () => {
    const reader = wt.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        onMessage(decoder.decode(value));
      }
    } catch {
      /* the session closed: the stream's reader reports it */
    }
  })();
  wt.closed.then(() => closed("session closed"), (e) => closed(e));
  return {
    kind: "webtransport",
    send: (text) => {
      const body = encoder.encode(text);
      const frame = new Uint8Array(4 + body.length);
      new DataView(frame.buffer).setUint32(0, body.length);
      frame.set(body, 4);
      writer.write(frame).catch((e) => closed(e));
    },
    close: () => {
      open = false;
      try {
        wt.close();
      } catch {
        /* already closed */
      }
    },
    isOpen: () => open,
  };
}

export async function connectSignaling({ wsUrl, force, onMessage, onClose }) {
  const haveWt = typeof window.WebTransport === "function";
  if (force === "webtransport" || (force !== "ws" && haveWt)) {
    try {
      if (!haveWt) throw new Error("this browser has no WebTransport");
      return await openWebTransport(onMessage, onClose);
    } catch (e) {
      if (force === "webtransport") throw e;
      console.warn("ferry: WebTransport failed, using WebSocket:", e);
    }
  }
  return openWebSocket(wsUrl, onMessage, onClose);
}
