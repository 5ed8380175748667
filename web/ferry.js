// Ferry browser client: plain ES module, no build step.
// Protocol: docs/protocol.md (hello -> join -> publish on the publisher PC; server-driven
// subscriber_offer / subscriber_answer on the subscriber PC).
//
// Query parameters: room, name, autojoin=1, relay=1, turn=turn:HOST:PORT, turnuser,
// turnpass, simulcast=0, publish=0 (subscribe only), token + url (skip the dev-token
// endpoint, e.g. with a token from `ferry token`), record=0 (a dev token without the
// roomRecord grant: no record button), transport=ws|webtransport (force a signaling
// transport; by default WebTransport when the browser has it, else WebSocket).
//
// Test hook: window.ferry = {state, participants(), stats(), localStats(), events, sids,
// recording, canRecord, transport, reconnects, restartIce(), toggleRecording(), captions,
// captionLine(participantSid), transcript(), toggleCaptions(), chatLines(), sendChat(text)}.
//
// A dropped signaling connection is resumed (resume {token, last_seq}) on a new one while
// the peer connections keep running; the state shows "reconnecting" meanwhile. If a peer
// connection's ICE is down by then (the media path changed), both restart ICE.
//
// This module wires the page: events, join/leave/resume, window.ferry. The rest, one
// concept each: state.js (query parameters, `app`, status line), signaling.js
// (requests and events), media.js (publisher and subscriber peer connections), rtc.js
// (SDP and WebRTC helpers), tiles.js (participants' tiles, adaptive stream), stats.js,
// recording.js, captions.js, chat.js, classroom.js, transport.js.

import { Captions } from "./captions.js";
import { Chat } from "./chat.js";
import { Classroom } from "./classroom.js";
import { createSubscriber, handleSubscriberOffer, mediaPathDown, publish, restartIce, setPublisherLayers, syncReceivers } from "./media.js";
import { onQuality } from "./quality.js";
import { endShare, stageTiles, toggleShare } from "./screen.js";
import { setRecording, toggleRecording, tokenGrants } from "./recording.js";
import { iceConfig } from "./rtc.js";
import { FerryError, PROTOCOL_VERSION, Signaling } from "./signaling.js";
import { $, app, fail, params, setState, status } from "./state.js";
import { collectStats, localStats, updateTileStats } from "./stats.js";
import { ensureParticipant, participantName, removeParticipant, setBadge, updateMuteBadges } from "./tiles.js";

// Resume after a dropped signaling connection: backoff from 100 ms doubling to 2 s, for
// at most RESUME_WINDOW_MS (the server keeps the participant 15 s by default).
const RESUME_WINDOW_MS = 15000;

// Captions: the line under a tile is the speaker's; our own speech goes under our tile.
const captions = new Captions({
  tileFor: (sid) => (app.me && sid === app.me.sid ? $("local-tile") : app.participants.get(sid)?.tile || null),
  nameOf: (sid) => (app.me && sid === app.me.sid ? participantName(app.me) : participantName(app.participants.get(sid)?.info || {})),
});

// Chat: room messages of topic "chat" (web/chat.js); the join and resume ask for what
// the panel has not shown.
const chat = new Chat({ request: (type, fields) => app.sig.request(type, fields) });

// Classroom control (web/classroom.js): moderation buttons for a roomAdmin token, hands.
const classroom = new Classroom({
  request: (type, fields) => app.sig.request(type, fields),
  participants: () => app.participants,
  status: (text, isError) => status(text, isError),
  me: () => app.me,
});

async function toggleCaptions() {
  const button = $("cc");
  button.disabled = true;
  try {
    const reply = await app.sig.request("set_captions", { enabled: !captions.state.enabled });
    captions.setState(reply.captions);
  } catch (e) {
    fail("captions", e);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------- events

function onEvent(msg) {
  if (typeof msg.seq === "number") {
    if (msg.seq <= app.lastSeq) return; // replayed on resume, already handled
    app.lastSeq = msg.seq;
  }
  app.events.push(msg);
  if (app.events.length > 500) app.events.shift();
  classroom.onEvent(msg);
  switch (msg.type) {
    case "participant_joined":
      ensureParticipant(msg.participant?.sid, msg.participant);
      break;
    case "participant_left":
      removeParticipant(msg.sid);
      break;
    case "track_published": {
      const t = msg.track || {};
      const p = ensureParticipant(t.participant_sid);
      if (p) {
        p.info.tracks = (p.info.tracks || []).filter((x) => x.sid !== t.sid).concat([t]);
        app.trackOwner.set(t.sid, t.participant_sid);
        updateMuteBadges(p);
        if (t.source === "screen") syncReceivers(); // its receiver may be attached already
      }
      break;
    }
    case "track_unpublished": {
      const p = app.participants.get(msg.participant_sid);
      if (p) {
        p.info.tracks = (p.info.tracks || []).filter((x) => x.sid !== msg.track_sid);
        updateMuteBadges(p);
      }
      app.trackOwner.delete(msg.track_sid);
      break;
    }
    case "track_muted": {
      const p = app.participants.get(msg.participant_sid);
      if (p) {
        for (const t of p.info.tracks || []) if (t.sid === msg.track_sid) t.muted = msg.muted;
        updateMuteBadges(p);
      }
      break;
    }
    case "active_speakers": {
      const speaking = new Set((msg.speakers || []).map((s) => s.sid));
      for (const [sid, p] of app.participants) p.tile.classList.toggle("speaking", speaking.has(sid));
      $("local-tile").classList.toggle("speaking", !!app.me && speaking.has(app.me.sid));
      break;
    }
    case "track_paused":
    case "track_resumed": {
      const p = app.participants.get(app.trackOwner.get(msg.track_sid));
      if (p) {
        const paused = msg.type === "track_paused";
        setBadge(p.tile, `paused-${msg.track_sid}`, paused ? `paused${msg.reason ? ` (${msg.reason})` : ""}` : "");
      }
      break;
    }
    case "subscriber_offer":
      // Serialize: each offer is fully answered before the next one is applied.
      app.latestOffer = Math.max(app.latestOffer, msg.version);
      app.offerChain = app.offerChain.then(() => handleSubscriberOffer(msg)).catch((e) => fail("subscriber offer", e));
      break;
    case "publisher_layers":
      setPublisherLayers(msg.layers || {}).catch((e) => fail("publisher_layers", e));
      break;
    case "recording_started":
      setRecording(msg.recording_id);
      break;
    case "recording_stopped":
      if (msg.recording_id === app.recording) setRecording(null);
      if (msg.reason && msg.reason !== "stopped") status(`recording stopped: ${msg.reason}`, msg.reason === "disk_full");
      break;
    case "stream_started":
    case "stream_stopped": // the room's live HLS stream (signaling/streaming.py)
      $("live-badge").hidden = msg.type === "stream_stopped";
      $("live-badge").title = msg.url || "";
      break;
    case "connection_quality":
      onQuality(msg);
      break;
    case "caption":
      captions.onCaption(msg);
      break;
    case "data":
      chat.onData(msg);
      break;
    case "captions_state":
      captions.setState(msg);
      break;
    case "captions_status": {
      // The server is overloaded: this track's captions lag behind, or are paused.
      const owner = app.trackOwner.get(msg.track_sid);
      const tile = owner ? app.participants.get(owner)?.tile : app.myTracks.audio?.sid === msg.track_sid ? $("local-tile") : null;
      if (tile) setBadge(tile, "captions", msg.state === "resumed" ? "" : `captions ${msg.state}`);
      break;
    }
    case "recording_error":
      status(`recording: ${msg.track_sid} ${msg.reason}`, true);
      break;
    case "subscription_failed": // past the server's m-lines per viewer; offered once one frees
      status(`not receiving track ${msg.track_sid}: already receiving ${msg.limit} tracks`, true);
      break;
    case "error":
      fail("server", new FerryError(msg.error?.code || "error", msg.error?.message || ""));
      break;
    case "leave": {
      // The server ended this session: the same name joined elsewhere (replaced), a newer
      // connection of this session took over (resumed: the same user, not an error), or
      // the server is stopping (also any reason this page does not know).
      const reasons = {
        replaced: "you joined from another tab or device",
        resumed: "this session continues on another connection",
      };
      const why = reasons[msg.reason] || "the server is stopping";
      app.leaving = true;
      teardown();
      setState("left");
      $("call").hidden = true;
      $("join-form").hidden = false;
      status(`Left the room: ${why}.`, !(msg.reason in reasons));
      break;
    }
    default:
      break;
  }
  classroom.refresh();
}

function newSignaling(url) {
  // Events and closes of a connection that is no longer the session's are ignored.
  const sig = new Signaling(
    url,
    (msg) => {
      if (sig === app.sig) onEvent(msg);
    },
    () => {
      if (sig === app.sig) onSocketClose();
    },
  );
  return sig;
}

function onSocketClose() {
  if (app.leaving || app.state === "left" || app.state === "idle") return;
  if (app.state === "joined" && app.resumeToken) {
    reconnect();
    return;
  }
  status("signaling connection lost", true);
  teardown();
  setState("error");
}

async function reconnect() {
  setState("reconnecting");
  status("reconnecting…");
  const deadline = Date.now() + RESUME_WINDOW_MS;
  let delay = 100;
  while (Date.now() < deadline && app.state === "reconnecting") {
    const sig = newSignaling(app.sigUrl);
    try {
      await sig.open();
      await sig.request("hello", { version: PROTOCOL_VERSION }, 3000);
      app.sig = sig; // the replayed events follow the reply on this connection
      const reply = await sig.request("resume", { token: app.resumeToken, last_seq: app.lastSeq, ...chat.since() }, 3000);
      app.resumeToken = reply.resume_token;
      app.reconnects += 1;
      setState("joined");
      status("");
      if (mediaPathDown()) restartIce().catch((e) => fail("ICE restart", e));
      return;
    } catch (e) {
      if (e.code && e.code.startsWith("resume_")) {
        status(`could not resume the session (${e.code}); join again`, true);
        teardown();
        setState("error");
        $("join-form").hidden = false;
        $("call").hidden = true;
        return;
      }
      sig.close();
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 2000);
  }
  if (app.state === "reconnecting") {
    status("signaling connection lost", true);
    teardown();
    setState("error");
  }
}

// ------------------------------------------------------------------------- join / leave

async function fetchToken(room, name) {
  if (params.get("token")) {
    return { token: params.get("token"), url: params.get("url") };
  }
  const record = params.get("record") === "0" ? "&record=0" : "";
  const res = await fetch(`/api/dev-token?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}${record}`);
  if (!res.ok) {
    let detail = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      if (body.error) detail = body.error.message || body.error.code || JSON.stringify(body.error);
    } catch {
      /* not JSON */
    }
    throw new FerryError("unauthorized", `dev token: ${detail}`);
  }
  return res.json();
}

function defaultWsUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

async function join(room, name) {
  if (app.state === "joining" || app.state === "joined") return;
  setState("joining");
  status(`joining ${room}…`);
  app.leaving = false;
  try {
    const { token, url } = await fetchToken(room, name);
    app.sigUrl = url || defaultWsUrl();
    app.lastSeq = 0;
    app.sig = newSignaling(app.sigUrl);
    await app.sig.open();
    await app.sig.request("hello", { version: PROTOCOL_VERSION });
    const reply = await app.sig.request("join", { token, auto_subscribe: true, ...chat.since() });
    app.resumeToken = reply.resume_token || null;
    const grants = tokenGrants(token);
    app.canRecord = !!(grants.roomRecord || grants.roomAdmin);
    setRecording(reply.recording?.id);
    app.me = reply.participant;
    captions.joined(reply.captions, grants.roomAdmin);
    chat.joined(!!grants.canPublishData);
    app.room = reply.room;
    app.config = iceConfig(reply.ice_servers);
    $("join-form").hidden = true;
    $("call").hidden = false;
    $("room-label").textContent = `room ${reply.room?.name ?? room} as ${participantName(reply.participant || {})}`;
    for (const info of reply.participants || []) ensureParticipant(info.sid, info);
    classroom.joined(grants.roomAdmin);
    if (!app.sub) createSubscriber();
    if (params.get("publish") !== "0") await publish();
    setState("joined");
    status("");
    app.statsTimer = setInterval(updateTileStats, 1000);
  } catch (e) {
    fail("join", e);
    teardown();
    setState("error");
    $("join-form").hidden = false;
    $("call").hidden = true;
  }
}

function teardown() {
  clearInterval(app.statsTimer);
  app.statsTimer = null;
  for (const sid of [...app.participants.keys()]) removeParticipant(sid);
  for (const pc of [app.pub, app.sub]) if (pc) pc.close();
  app.pub = app.sub = null;
  app.videoSender = null;
  endShare();
  if (app.localStream) for (const t of app.localStream.getTracks()) t.stop();
  app.localStream = null;
  $("local-video").srcObject = null;
  if (app.sig) {
    app.leaving = true;
    app.sig.close();
  }
  app.sig = null;
  app.midMap = new Map();
  app.receivers.clear();
  app.trackOwner.clear();
  app.myTracks = { audio: null, video: null };
  app.me = null;
  app.resumeToken = null;
  app.canRecord = false;
  setRecording(null);
  captions.reset();
  chat.reset();
  classroom.reset();
  app.offerChain = Promise.resolve();
  app.latestOffer = 0;
  app.prevBytes.clear();
}

async function leave() {
  app.leaving = true;
  if (app.sig) {
    try {
      await app.sig.request("leave", {}, 3000);
    } catch (e) {
      if (e.code !== "closed") fail("leave", e);
    }
  }
  teardown();
  setState("left");
  $("call").hidden = true;
  $("join-form").hidden = false;
  for (const b of [$("mute-mic"), $("mute-cam")]) b.setAttribute("aria-pressed", "false");
  $("mute-mic").textContent = "Mute mic";
  $("mute-cam").textContent = "Stop camera";
}

async function toggleMute(kind, button) {
  const track = app.localStream && (kind === "audio" ? app.localStream.getAudioTracks()[0] : app.localStream.getVideoTracks()[0]);
  if (!track) return;
  const muted = track.enabled; // currently enabled -> mute
  track.enabled = !muted;
  button.setAttribute("aria-pressed", String(muted));
  button.textContent = kind === "audio" ? (muted ? "Unmute mic" : "Mute mic") : muted ? "Start camera" : "Stop camera";
  const info = app.myTracks[kind];
  if (!info) return;
  try {
    await app.sig.request("mute", { track_sid: info.sid, muted });
  } catch (e) {
    fail("mute", e);
  }
}

// ------------------------------------------------------------------------- wiring

window.ferry = {
  get state() {
    return app.state;
  },
  participants() {
    return [...app.participants.values()].map((p) => ({
      sid: p.info.sid,
      identity: p.info.identity,
      name: p.info.name,
      tracks: p.info.tracks || [],
      speaking: p.tile.classList.contains("speaking"),
      hasVideo: !!p.tile.querySelector("video").srcObject,
      hasAudio: !!p.tile.querySelector("audio").srcObject,
      videoTrackSid: p.videoTrackSid,
    }));
  },
  stats: collectStats,
  localStats,
  shareScreen: toggleShare,
  stage: stageTiles,
  // Simulcast encodings of the camera sender as the browser applies them (dynacast tests).
  publisherEncodings() {
    if (!app.videoSender) return [];
    return (app.videoSender.getParameters().encodings || []).map((e) => ({ rid: e.rid ?? null, active: e.active !== false, maxBitrate: e.maxBitrate ?? null }));
  },
  get me() {
    return app.me;
  },
  get events() {
    return app.events.slice();
  },
  get recording() {
    return app.recording;
  },
  get canRecord() {
    return app.canRecord;
  },
  get reconnects() {
    return app.reconnects;
  },
  restartIce,
  // "webtransport" or "ws": the signaling transport in use (null before joining).
  get transport() {
    return app.sig ? app.sig.kind : null;
  },
  get captions() {
    return { ...captions.state, canToggle: captions.canToggle };
  },
  // The caption line under a participant's tile: {text, partial, visible}.
  captionLine(sid) {
    const tile = captions.tileFor(sid);
    const line = tile && tile.querySelector(".caption");
    return line ? { text: line.textContent, partial: line.classList.contains("partial"), visible: !line.hidden } : null;
  },
  transcript: () => captions.transcript(),
  toggleCaptions,
  chatLines: () => chat.lines(),
  sendChat: (text) => chat.sendText(text),
  toggleRecording,
  join,
  leave,
};

$("join-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  join($("room").value.trim(), $("name").value.trim());
});
$("leave").addEventListener("click", () => leave());
$("record").addEventListener("click", () => toggleRecording());
$("cc").addEventListener("click", () => toggleCaptions());
$("transcript-toggle").addEventListener("click", () => captions.togglePanel());
$("chat-toggle").addEventListener("click", () => chat.togglePanel());
$("mute-mic").addEventListener("click", (ev) => toggleMute("audio", ev.currentTarget));
$("mute-cam").addEventListener("click", (ev) => toggleMute("video", ev.currentTarget));
$("share-screen").addEventListener("click", () => toggleShare());

if (params.get("room")) $("room").value = params.get("room");
if (params.get("name")) $("name").value = params.get("name");
else $("name").value = `guest-${Math.floor(Math.random() * 1e4)}`;
setState("idle");
if (params.get("autojoin") === "1") join($("room").value.trim(), $("name").value.trim());
