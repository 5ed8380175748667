// WebRTC statistics: per remote participant (window.ferry.stats()), of the publisher
// (window.ferry.localStats()), and the line under each remote tile.

import { app } from "./state.js";
import { participantName } from "./tiles.js";

export function selectedRtt(report) {
  let rtt = null;
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      const pair = report.get(s.selectedCandidatePairId);
      if (pair && pair.currentRoundTripTime !== undefined) rtt = pair.currentRoundTripTime;
    }
  });
  if (rtt === null) {
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime;
    });
  }
  return rtt;
}

// Per remote participant: {name, videoFramesDecoded, videoBytes, videoPacketsReceived,
// videoPacketsLost, videoFps, videoWidth, videoHeight, videoBitrate (bit/s since the last
// call of this function), audioSamplesReceived, audioBytes, audioPacketsReceived,
// audioPacketsLost, rtt, trackSids}.
export async function collectStats() {
  const out = {};
  for (const [sid, p] of app.participants) {
    out[sid] = {
      name: participantName(p.info),
      videoFramesDecoded: 0, videoBytes: 0, videoPacketsReceived: 0, videoPacketsLost: 0,
      videoFps: null, videoWidth: null, videoHeight: null, videoBitrate: null,
      audioSamplesReceived: 0, audioBytes: 0, audioPacketsReceived: 0, audioPacketsLost: 0,
      rtt: null, trackSids: [],
    };
  }
  if (!app.sub) return out;
  const report = await app.sub.getStats();
  const rtt = selectedRtt(report);
  report.forEach((s) => {
    if (s.type !== "inbound-rtp") return;
    const r = app.receivers.get(s.trackIdentifier) || [...app.receivers.values()].find((x) => x.mid === s.mid);
    if (!r || !out[r.psid]) return;
    const o = out[r.psid];
    o.rtt = rtt;
    if (!o.trackSids.includes(r.tsid)) o.trackSids.push(r.tsid);
    const prev = app.prevBytes.get(s.id);
    const bitrate = prev && s.timestamp > prev.ts ? (8 * (s.bytesReceived - prev.bytes) * 1000) / (s.timestamp - prev.ts) : null;
    app.prevBytes.set(s.id, { bytes: s.bytesReceived || 0, ts: s.timestamp });
    if (s.kind === "video") {
      o.videoFramesDecoded += s.framesDecoded || 0;
      o.videoBytes += s.bytesReceived || 0;
      o.videoPacketsReceived += s.packetsReceived || 0;
      o.videoPacketsLost += s.packetsLost || 0;
      o.videoFps = s.framesPerSecond ?? o.videoFps;
      o.videoWidth = s.frameWidth ?? o.videoWidth;
      o.videoHeight = s.frameHeight ?? o.videoHeight;
      if (bitrate !== null) o.videoBitrate = (o.videoBitrate || 0) + bitrate;
    } else {
      o.audioSamplesReceived += s.totalSamplesReceived || 0;
      o.audioBytes += s.bytesReceived || 0;
      o.audioPacketsReceived += s.packetsReceived || 0;
      o.audioPacketsLost += s.packetsLost || 0;
    }
  });
  return out;
}

export async function localStats() {
  const out = { encodings: [], rtt: null };
  if (!app.pub) return out;
  const report = await app.pub.getStats();
  out.rtt = selectedRtt(report);
  report.forEach((s) => {
    if (s.type === "outbound-rtp") {
      out.encodings.push({
        kind: s.kind, rid: s.rid ?? null, bytesSent: s.bytesSent, packetsSent: s.packetsSent,
        framesEncoded: s.framesEncoded ?? null, frameWidth: s.frameWidth ?? null, frameHeight: s.frameHeight ?? null,
        active: s.active ?? null, qualityLimitationReason: s.qualityLimitationReason ?? null,
      });
    }
  });
  return out;
}

let statsBusy = false;
export async function updateTileStats() {
  if (statsBusy || !app.sub) return;
  statsBusy = true;
  try {
    const stats = await collectStats();
    for (const [sid, s] of Object.entries(stats)) {
      const p = app.participants.get(sid);
      if (!p) continue;
      const total = s.videoPacketsLost + s.videoPacketsReceived;
      const loss = total > 0 ? ((100 * s.videoPacketsLost) / total).toFixed(1) : "0.0";
      const kbps = s.videoBitrate !== null ? Math.round(s.videoBitrate / 1000) : "-";
      const rtt = s.rtt !== null ? `${Math.round(s.rtt * 1000)} ms` : "-";
      p.tile.querySelector(".stats").textContent =
        `${kbps} kbit/s · loss ${loss}% · ${s.videoFramesDecoded} frames · ${s.videoFps ?? "-"} fps` +
        `${s.videoWidth ? ` · ${s.videoWidth}x${s.videoHeight}` : ""} · rtt ${rtt}`;
    }
  } catch (e) {
    console.warn("ferry: stats failed", e);
  } finally {
    statsBusy = false;
  }
}
