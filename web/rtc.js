// WebRTC helpers without session state: the subscriber offer's m-lines, codec
// preferences, ICE gathering, and the RTCConfiguration of both peer connections.

import { params } from "./state.js";

export function parseMediaSections(sdp) {
  // mid -> {psid, tsid, kind, active}; a=msid is "<participant_sid> <track_sid>".
  const out = new Map();
  let cur = null;
  const flush = () => {
    if (cur && cur.mid !== null) out.set(cur.mid, cur);
  };
  for (const raw of sdp.split(/\r?\n/)) {
    if (raw.startsWith("m=")) {
      flush();
      const parts = raw.slice(2).split(" ");
      cur = { mid: null, kind: parts[0], active: parts[1] !== "0", psid: null, tsid: null };
    } else if (!cur) {
      continue;
    } else if (raw.startsWith("a=mid:")) {
      cur.mid = raw.slice(6).trim();
    } else if (raw.startsWith("a=msid:")) {
      const bits = raw.slice(7).trim().split(/\s+/);
      cur.psid = bits[0];
      cur.tsid = bits[1] || null;
    } else if (raw === "a=inactive" || raw === "a=recvonly") {
      cur.active = false;
    }
  }
  flush();
  return out;
}

export function preferCodecs(transceiver, kind, first) {
  let caps = null;
  try {
    caps = RTCRtpSender.getCapabilities(kind) || RTCRtpReceiver.getCapabilities(kind);
  } catch {
    caps = null;
  }
  if (!caps || !transceiver.setCodecPreferences) return;
  const rank = (c) => {
    const i = first.indexOf(c.mimeType.toLowerCase());
    return i < 0 ? first.length : i;
  };
  const codecs = caps.codecs.slice().sort((a, b) => rank(a) - rank(b));
  try {
    transceiver.setCodecPreferences(codecs);
  } catch (e) {
    try {
      const rcaps = RTCRtpReceiver.getCapabilities(kind);
      transceiver.setCodecPreferences(rcaps.codecs.slice().sort((a, b) => rank(a) - rank(b)));
    } catch {
      console.warn("ferry: setCodecPreferences failed", e);
    }
  }
}

export function waitForGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

export function iceConfig(serverIce) {
  const iceServers = [];
  for (const s of serverIce || []) {
    const urls = s.urls || s.url;
    if (urls) iceServers.push({ urls, username: s.username, credential: s.credential });
  }
  if (params.get("turn")) {
    iceServers.push({ urls: params.get("turn"), username: params.get("turnuser") || undefined, credential: params.get("turnpass") || undefined });
  }
  const config = { iceServers, bundlePolicy: "max-bundle" };
  if (params.get("relay") === "1") config.iceTransportPolicy = "relay";
  return config;
}
