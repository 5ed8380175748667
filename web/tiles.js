// Remote participants' tiles: the tile of each participant, its badges, and adaptive
// stream (the size each remote video is shown at, and whether it is seen at all, sent
// to the server as update_subscription).

import { refresh as refreshQuality, forget as forgetQuality } from "./quality.js";
import { $, app, fail, params } from "./state.js";

export function participantName(info) {
  return info.name || info.identity || info.sid;
}

export function ensureParticipant(sid, info = null) {
  if (!sid || (app.me && sid === app.me.sid)) return null;
  let p = app.participants.get(sid);
  if (!p) {
    p = { info: info || { sid, tracks: [] }, tile: makeTile(sid), videoTrackSid: null, lastSize: "", sendTimer: null, onScreen: true };
    app.participants.set(sid, p);
    refreshQuality(sid);
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

export function removeParticipant(sid) {
  const p = app.participants.get(sid);
  if (!p) return;
  resizeObserver.unobserve(p.tile.querySelector("video"));
  visibilityObserver.unobserve(p.tile.querySelector("video"));
  clearTimeout(p.sendTimer);
  p.tile.remove();
  app.participants.delete(sid);
  forgetQuality(sid);
  for (const [tsid, owner] of app.trackOwner) if (owner === sid) app.trackOwner.delete(tsid);
}

export function setBadge(tile, key, text, cls = "") {
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

export function updateMuteBadges(p) {
  const tracks = p.info.tracks || [];
  const mic = tracks.find((t) => t.kind === "audio");
  const cam = tracks.find((t) => t.kind === "video");
  setBadge(p.tile, "mic", mic && mic.muted ? "mic off" : "", "muted");
  setBadge(p.tile, "cam", cam && cam.muted ? "cam off" : "", "muted");
}

// Adaptive stream: tell the server how big each remote video is shown (debounced 500 ms).
export const SIZE_DEBOUNCE_MS = 500;
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
export function scheduleSend(p, delayMs) {
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

// Track sids of the last answered subscriber offer: what Ferry has subscribed this page to.
export const subscribedTracks = new Set();
