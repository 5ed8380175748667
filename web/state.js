// Shared state of the browser client: the query parameters, the session (`app`), its
// state label and the status line. Every module of the page reads and updates `app`.

export const params = new URLSearchParams(location.search);
export const $ = (id) => document.getElementById(id);

export const STATES = ["idle", "joining", "joined", "reconnecting", "left", "error"];

export const app = {
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

export function setState(s) {
  if (!STATES.includes(s)) throw new Error(`bad state ${s}`);
  app.state = s;
  const el = $("state");
  el.textContent = s;
  el.dataset.state = s;
}

export function status(msg, isError = false) {
  const el = $("status");
  el.textContent = msg;
  el.classList.toggle("error", isError);
  if (isError) console.error("ferry:", msg);
}

export function fail(where, err) {
  const code = err && err.code ? `${err.code}: ` : "";
  status(`${where}: ${code}${err && err.message ? err.message : err}`, true);
}
