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

import { Captions } from "./captions.js";
import { Chat } from "./chat.js";
import { Classroom } from "./classroom.js";
import { connectSignaling } from "./transport.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const PROTOCOL_VERSION = 1;
const STATES = ["idle", "joining", "joined", "reconnecting", "left", "error"];
// Resume after a dropped signaling connection: backoff from 100 ms doubling to 2 s, for
// at most RESUME_WINDOW_MS (the server keeps the participant 15 s by default).
const RESUME_WINDOW_MS = 15000;

// ------------------------------------------------------------------------- state

const app = {
  state: "idle",
  sig: null, // Signaling
  pub: null, // publisher RTCPeerConnection
  sub: null, // subscriber RTCPeerConnection
  localStream: null,
  videoSender: null,
  me: null, // {sid, identity, name}
  room: null,
  config: null, // RTCConfiguration for both PCs
  participants: new Map(), // sid -> {info, tile}
  trackOwner: new Map(), // track_sid -> participant sid (from TrackInfo)
  myTracks: { audio: null, video: null }, // kind -> TrackInfo (our published tracks)
  midMap: new Map(), // subscriber mid -> {psid, tsid, kind}
  receivers: new Map(), // remote MediaStreamTrack.id -> {psid, tsid, kind, track}
  offerChain: Promise.resolve(),
  latestOffer: 0, // version of the newest subscriber_offer received
  statsTimer: null,
  prevBytes: new Map(), // inbound-rtp id -> {bytes, ts}
  events: [],
  leaving: false,
  sigUrl: null, // signaling URL (WebSocket fallback) of this session
  resumeToken: null, // from the join/resume reply: resume {token, last_seq} after a drop
  lastSeq: 0, // seq of the last event handled (a replay repeats nothing)
  reconnects: 0,
  recording: null, // id of the room's active recording, or null
  canRecord: false, // the token has roomRecord or roomAdmin: the record button is shown
};

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

function setState(s) {
  if (!STATES.includes(s)) throw new Error(`bad state ${s}`);
  app.state = s;
  const el = $("state");
  el.textContent = s;
  el.dataset.state = s;
}

function status(msg, isError = false) {
  const el = $("status");
  el.textContent = msg;
  el.classList.toggle("error", isError);
  if (isError) console.error("ferry:", msg);
}

function fail(where, err) {
  const code = err && err.code ? `${err.code}: ` : "";
  status(`${where}: ${code}${err && err.message ? err.message : err}`, true);
}

// ------------------------------------------------------------------------- signaling

class FerryError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

class Signaling {
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

// ------------------------------------------------------------------------- recording

// The token's grants, read from its payload (the server checks them; this only decides
// whether to show the record button).
function tokenGrants(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const payload = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return payload.video || {};
  } catch {
    return {};
  }
}

// Everyone sees the badge while the room is recorded; hosts also get the button.
function setRecording(id) {
  app.recording = id || null;
  $("rec-badge").hidden = !app.recording;
  const button = $("record");
  button.hidden = !app.canRecord;
  button.setAttribute("aria-pressed", String(!!app.recording));
  button.textContent = app.recording ? "Stop recording" : "Record";
}

async function toggleRecording() {
  const button = $("record");
  button.disabled = true;
  try {
    if (app.recording) await app.sig.request("stop_recording");
    else setRecording((await app.sig.request("start_recording")).recording_id);
  } catch (e) {
    fail("recording", e);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------- tiles

function participantName(info) {
  return info.name || info.identity || info.sid;
}

function ensureParticipant(sid, info = null) {
  if (!sid || (app.me && sid === app.me.sid)) return null;
  let p = app.participants.get(sid);
  if (!p) {
    p = { info: info || { sid, tracks: [] }, tile: makeTile(sid), videoTrackSid: null, lastSize: "", sendTimer: null, onScreen: true };
    app.participants.set(sid, p);
  } else if (info) {
    p.info = info;
  }
  for (const t of p.info.tracks || []) app.trackOwner.set(t.sid, sid);
  p.tile.querySelector(".tile-name").textContent = participantName(p.info);
  updateMuteBadges(p);
  return p;
}

function makeTile(sid) {
  const tile = document.createElement("div");
  tile.className = "tile remote";
  tile.dataset.sid = sid;
  tile.innerHTML =
    '<div class="tile-head"><span class="tile-name"></span><span class="badges"></span></div>' +
    '<video autoplay playsinline muted></video><audio autoplay></audio>' +
    '<div class="caption" aria-live="polite" hidden></div><div class="stats"></div>';
  $("tiles").appendChild(tile);
  const video = tile.querySelector("video");
  resizeObserver.observe(video);
  visibilityObserver.observe(video);
  return tile;
}

function removeParticipant(sid) {
  const p = app.participants.get(sid);
  if (!p) return;
  resizeObserver.unobserve(p.tile.querySelector("video"));
  visibilityObserver.unobserve(p.tile.querySelector("video"));
  clearTimeout(p.sendTimer);
  p.tile.remove();
  app.participants.delete(sid);
  for (const [tsid, owner] of app.trackOwner) if (owner === sid) app.trackOwner.delete(tsid);
}

function setBadge(tile, key, text, cls = "") {
  const badges = tile.querySelector(".badges");
  let b = badges.querySelector(`[data-key="${key}"]`);
  if (!text) {
    if (b) b.remove();
    return;
  }
  if (!b) {
    b = document.createElement("span");
    b.dataset.key = key;
    badges.appendChild(b);
  }
  b.className = `badge ${cls}`;
  b.textContent = text;
}

function updateMuteBadges(p) {
  const tracks = p.info.tracks || [];
  const mic = tracks.find((t) => t.kind === "audio");
  const cam = tracks.find((t) => t.kind === "video");
  setBadge(p.tile, "mic", mic && mic.muted ? "mic off" : "", "muted");
  setBadge(p.tile, "cam", cam && cam.muted ? "cam off" : "", "muted");
}

// Adaptive stream: tell the server how big each remote video is shown (debounced 500 ms).
const SIZE_DEBOUNCE_MS = 500;
const resizeObserver = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const p = tileParticipant(entry.target);
    if (p) scheduleSend(p, SIZE_DEBOUNCE_MS);
  }
});

function tileParticipant(el) {
  const tile = el.closest(".tile");
  return tile && app.participants.get(tile.dataset.sid);
}

// One pending update_subscription per tile: the latest reason to send wins.
function scheduleSend(p, delayMs) {
  clearTimeout(p.sendTimer);
  p.sendTimer = setTimeout(() => sendSize(p), delayMs);
}

// A tile scrolled out of view, or the whole tab in the background, needs no video:
// Ferry stops forwarding it (enabled: false) and resumes on a keyframe when it is seen
// again. Turning off waits a second, so scrolling past a tile does not churn keyframes.
const HIDE_AFTER_MS = 1000;
const visibilityObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const p = tileParticipant(entry.target);
    if (!p) continue;
    p.onScreen = entry.isIntersecting;
    scheduleVisibility(p);
  }
});
document.addEventListener("visibilitychange", () => {
  for (const p of app.participants.values()) scheduleVisibility(p);
});

// ?hidden=keep turns this off (QA pages measure every tile, seen or not).
const PAUSE_HIDDEN = params.get("hidden") !== "keep";

function wantsVideo(p) {
  return !PAUSE_HIDDEN || (p.onScreen && document.visibilityState !== "hidden");
}

function scheduleVisibility(p) {
  scheduleSend(p, wantsVideo(p) ? 0 : HIDE_AFTER_MS);
}

function sendSize(p) {
  // Allowed as soon as the join reply arrived (state may still be "joining" while
  // publishing): a size dropped here would never be re-sent until the next resize.
  if (!p.videoTrackSid || !app.sig || !app.me) return;
  // Ferry subscribes once it has the answer: a size sent earlier is refused (not_found).
  if (!subscribedTracks.has(p.videoTrackSid)) return;
  const video = p.tile.querySelector("video");
  const dpr = window.devicePixelRatio || 1;
  const width = Math.round(video.clientWidth * dpr);
  const height = Math.round(video.clientHeight * dpr);
  const enabled = wantsVideo(p);
  const key = `${p.videoTrackSid}:${width}x${height}:${enabled}`;
  if (key === p.lastSize) return;
  p.lastSize = key;
  app.sig
    .request("update_subscription", { track_sid: p.videoTrackSid, width, height, enabled })
    .catch((e) => fail("update_subscription", e));
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

// ------------------------------------------------------------------------- subscriber

function parseMediaSections(sdp) {
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

async function handleSubscriberOffer(msg) {
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

// Track sids of the last answered subscriber offer: what Ferry has subscribed this page to.
const subscribedTracks = new Set();

function createSubscriber() {
  app.sub = new RTCPeerConnection(app.config);
  app.sub.ontrack = () => syncReceivers();
  app.sub.onconnectionstatechange = () => {
    if (app.sub && app.sub.connectionState === "failed") status("subscriber connection failed", true);
  };
}

// Attach every receiving transceiver to its participant's tile, using the mid -> msid
// map of the latest offer (robust when the server recycles an m-line for another track).
function syncReceivers() {
  if (!app.sub) return;
  const perTile = new Map(); // psid -> {video, audio}
  app.receivers.clear();
  for (const tr of app.sub.getTransceivers()) {
    const m = tr.mid !== null ? app.midMap.get(tr.mid) : null;
    const track = tr.receiver.track;
    if (!m || !m.active || !m.psid || !track) continue;
    app.receivers.set(track.id, { psid: m.psid, tsid: m.tsid, kind: m.kind, track, mid: tr.mid });
    app.trackOwner.set(m.tsid, m.psid);
    const slot = perTile.get(m.psid) || {};
    slot[m.kind] = { track, tsid: m.tsid };
    perTile.set(m.psid, slot);
  }
  for (const psid of perTile.keys()) ensureParticipant(psid);
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

function attach(el, track) {
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

function preferCodecs(transceiver, kind, first) {
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

function waitForGathering(pc, timeoutMs) {
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

async function publish() {
  // ?video=0 publishes the microphone alone (an audio-only participant).
  const camera = params.get("video") === "0" ? false : { width: 1280, height: 720 };
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: camera });
  app.localStream = stream;
  $("local-video").srcObject = stream;
  const pc = new RTCPeerConnection(app.config);
  app.pub = pc;
  pc.onconnectionstatechange = () => {
    if (app.pub === pc && pc.connectionState === "failed") status("publisher connection failed", true);
  };
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
  await pc.setLocalDescription(await pc.createOffer());
  // Ferry is ICE-lite and does not need our candidates, but sending them in the offer
  // costs little on loopback/relay and makes the offer self-contained.
  await waitForGathering(pc, 3000);
  const reply = await app.sig.request("publish", { sdp: pc.localDescription.sdp, tracks });
  await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
  for (const t of reply.tracks || []) app.myTracks[t.kind] = t;
}

// ICE restart of both peer connections (the media path changed): the publisher re-offers
// with new credentials, and Ferry sends a subscriber offer with new ones.
async function restartIce() {
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

function mediaPathDown() {
  return [app.pub, app.sub].some((pc) => pc && ["disconnected", "failed"].includes(pc.iceConnectionState));
}

async function setPublisherLayers(layers) {
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

// ------------------------------------------------------------------------- join / leave

function iceConfig(serverIce) {
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

// ------------------------------------------------------------------------- stats

function selectedRtt(report) {
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
async function collectStats() {
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

async function localStats() {
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
async function updateTileStats() {
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

if (params.get("room")) $("room").value = params.get("room");
if (params.get("name")) $("name").value = params.get("name");
else $("name").value = `guest-${Math.floor(Math.random() * 1e4)}`;
setState("idle");
if (params.get("autojoin") === "1") join($("room").value.trim(), $("name").value.trim());
