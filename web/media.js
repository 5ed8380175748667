// The two peer connections: the subscriber (server-driven offers, remote tracks onto
// tiles) and the publisher (camera and microphone, simulcast layers, ICE restart).

import { parseMediaSections, preferCodecs, waitForGathering } from "./rtc.js";
import { $, app, params, status } from "./state.js";
import { syncScreens } from "./screen.js";
import { SIZE_DEBOUNCE_MS, ensureParticipant, scheduleSend, subscribedTracks } from "./tiles.js";

// ------------------------------------------------------------------------- subscriber

export async function handleSubscriberOffer(msg) {
  // Ferry accepts an answer to its newest offer only (it offers again when an answer is
  // late), and every offer describes the whole session: older queued ones are skipped.
  if (msg.version < app.latestOffer) return;
  if (!app.sub) createSubscriber();
  app.midMap = parseMediaSections(msg.sdp);
  await app.sub.setRemoteDescription({ type: "offer", sdp: msg.sdp });
  syncReceivers();
  const answer = await app.sub.createAnswer();
  await app.sub.setLocalDescription(answer);
  try {
    await app.sig.request("subscriber_answer", { sdp: app.sub.localDescription.sdp, version: msg.version });
  } catch (e) {
    if (e.code !== "conflict") throw e; // conflict: superseded by a newer offer, which follows
    return;
  }
  subscribedTracks.clear();
  for (const m of app.midMap.values()) if (m.active && m.tsid) subscribedTracks.add(m.tsid);
  for (const p of app.participants.values()) if (p.videoTrackSid) scheduleSend(p, 0);
}

export function createSubscriber() {
  app.sub = new RTCPeerConnection(app.config);
  app.sub.ontrack = () => syncReceivers();
  app.sub.onconnectionstatechange = () => {
    if (app.sub && app.sub.connectionState === "failed") status("subscriber connection failed", true);
  };
}

// Attach every receiving transceiver to its participant's tile, using the mid -> msid
// map of the latest offer (robust when the server recycles an m-line for another track).
export function syncReceivers() {
  if (!app.sub) return;
  const perTile = new Map(); // psid -> {video, audio}
  const screens = new Map(); // tsid -> {psid, track}: shared screens get the stage
  app.receivers.clear();
  for (const tr of app.sub.getTransceivers()) {
    const m = tr.mid !== null ? app.midMap.get(tr.mid) : null;
    const track = tr.receiver.track;
    if (!m || !m.active || !m.psid || !track) continue;
    app.receivers.set(track.id, { psid: m.psid, tsid: m.tsid, kind: m.kind, track, mid: tr.mid });
    app.trackOwner.set(m.tsid, m.psid);
    if (m.kind === "video" && trackSource(m.psid, m.tsid) === "screen") {
      screens.set(m.tsid, { psid: m.psid, track });
      continue;
    }
    const slot = perTile.get(m.psid) || {};
    slot[m.kind] = { track, tsid: m.tsid };
    perTile.set(m.psid, slot);
  }
  for (const psid of [...perTile.keys(), ...[...screens.values()].map((s) => s.psid)]) ensureParticipant(psid);
  syncScreens(screens);
  for (const [psid, p] of app.participants) {
    const slot = perTile.get(psid) || {};
    attach(p.tile.querySelector("video"), slot.video?.track);
    attach(p.tile.querySelector("audio"), slot.audio?.track);
    if (!slot.video) p.videoTrackSid = null;
    if (slot.video && p.videoTrackSid !== slot.video.tsid) {
      p.videoTrackSid = slot.video.tsid;
      p.lastSize = "";
      scheduleSend(p, SIZE_DEBOUNCE_MS);
    }
  }
}

function trackSource(psid, tsid) {
  const p = app.participants.get(psid);
  const info = p && (p.info.tracks || []).find((t) => t.sid === tsid);
  return info ? info.source : null;
}

export function attach(el, track) {
  if (!track) {
    if (el.srcObject) el.srcObject = null;
    return;
  }
  const current = el.srcObject && el.srcObject.getTracks()[0];
  if (current === track) return;
  el.srcObject = new MediaStream([track]);
  const played = el.play();
  if (played) played.catch(() => {}); // autoplay policy: retried on the next user gesture
}

// ------------------------------------------------------------------------- publisher

// The publisher connection, made on first use (a viewer that joined with ?publish=0
// makes it when it starts sharing its screen).
export function publisherConnection() {
  if (app.pub) return app.pub;
  const pc = new RTCPeerConnection(app.config);
  app.pub = pc;
  pc.onconnectionstatechange = () => {
    if (app.pub === pc && pc.connectionState === "failed") status("publisher connection failed", true);
  };
  return pc;
}

// Offer what the publisher connection sends now; `tracks` names the new tracks' sources
// (by MediaStreamTrack id). Ferry answers, and unpublishes m-lines no longer sending.
export async function renegotiatePublisher(tracks) {
  const pc = app.pub;
  await pc.setLocalDescription(await pc.createOffer());
  // Ferry is ICE-lite and does not need our candidates, but sending them in the offer
  // costs little on loopback/relay and makes the offer self-contained.
  await waitForGathering(pc, 3000);
  const reply = await app.sig.request("publish", { sdp: pc.localDescription.sdp, tracks });
  await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
  return reply;
}

export async function publish() {
  // ?video=0 publishes the microphone alone (an audio-only participant).
  const camera = params.get("video") === "0" ? false : { width: 1280, height: 720 };
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: camera });
  app.localStream = stream;
  $("local-video").srcObject = stream;
  const pc = publisherConnection();
  const tracks = {};
  const [audio] = stream.getAudioTracks();
  const [video] = stream.getVideoTracks();
  if (audio) {
    const tr = pc.addTransceiver(audio, { direction: "sendonly", streams: [stream] });
    preferCodecs(tr, "audio", ["audio/red", "audio/opus"]);
    tracks[audio.id] = { source: "microphone" };
  }
  if (video) {
    const init = { direction: "sendonly", streams: [stream] };
    if (params.get("simulcast") !== "0") {
      init.sendEncodings = [
        { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 },
        { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 },
        { rid: "f", maxBitrate: 1500000 },
      ];
    }
    const tr = pc.addTransceiver(video, init);
    app.videoSender = tr.sender;
    preferCodecs(tr, "video", ["video/vp8"]);
    tracks[video.id] = { source: "camera" };
  }
  const reply = await renegotiatePublisher(tracks);
  for (const t of reply.tracks || []) if (t.source !== "screen") app.myTracks[t.kind] = t;
}

// ICE restart of both peer connections (the media path changed): the publisher re-offers
// with new credentials, and Ferry sends a subscriber offer with new ones.
export async function restartIce() {
  if (app.pub) {
    const pc = app.pub;
    pc.restartIce();
    await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
    await waitForGathering(pc, 3000);
    const reply = await app.sig.request("publish", { sdp: pc.localDescription.sdp, tracks: {} });
    await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
  }
  await app.sig.request("ice_restart");
}

export function mediaPathDown() {
  return [app.pub, app.sub].some((pc) => pc && ["disconnected", "failed"].includes(pc.iceConnectionState));
}

// One layer change at a time: a change read while the previous setParameters is in
// flight would read the encodings before it and undo it (and Chrome refuses a
// setParameters whose transaction is stale).
let layerChanges = Promise.resolve();

export function setPublisherLayers(layers) {
  const next = layerChanges.then(() => applyPublisherLayers(layers));
  layerChanges = next.catch(() => {});
  return next;
}

async function applyPublisherLayers(layers) {
  const sender = app.videoSender;
  if (!sender) return;
  const p = sender.getParameters();
  if (!p.encodings) return;
  let changed = false;
  for (const enc of p.encodings) {
    if (enc.rid && enc.rid in layers && enc.active !== !!layers[enc.rid]) {
      enc.active = !!layers[enc.rid];
      changed = true;
    }
  }
  if (changed) await sender.setParameters(p);
}
