// Screen share: ours (getDisplayMedia, two simulcast layers with content hint
// "detail", so a viewer on a thin link still gets readable slides) and everyone's,
// shown big on the stage above the tiles. Ferry allocates a screen before cameras.

import { attach, publisherConnection, renegotiatePublisher } from "./media.js";
import { preferCodecs } from "./rtc.js";
import { $, app, fail } from "./state.js";
import { participantName } from "./tiles.js";

const ENCODINGS = [
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 250000 },
  { rid: "f", maxBitrate: 1500000 },
];
const share = { stream: null, sender: null, busy: false };

export function sharing() {
  return share.stream !== null;
}

export async function toggleShare() {
  if (share.busy) return;
  share.busy = true;
  $("share-screen").disabled = true;
  try {
    if (share.stream) await stopShare();
    else await startShare();
  } catch (e) {
    if (e.name !== "NotAllowedError") fail("screen share", e); // NotAllowed: the picker was cancelled
  } finally {
    share.busy = false;
    $("share-screen").disabled = false;
  }
}

async function startShare() {
  const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
  const [track] = stream.getVideoTracks();
  track.contentHint = "detail";
  const pc = publisherConnection();
  const tr = pc.addTransceiver(track, { direction: "sendonly", streams: [stream], sendEncodings: ENCODINGS });
  preferCodecs(tr, "video", ["video/vp8"]);
  share.stream = stream;
  share.sender = tr.sender;
  // The browser's own "Stop sharing" ends the track.
  track.onended = () => {
    if (share.stream === stream) toggleShare();
  };
  await renegotiatePublisher({ [track.id]: { source: "screen" } });
  showTile("local", "Your screen", track);
  setButton(true);
}

async function stopShare() {
  const { stream, sender } = share;
  share.stream = null;
  share.sender = null;
  for (const t of stream.getTracks()) t.stop();
  removeTile("local");
  setButton(false);
  if (app.pub && sender && app.pub.signalingState !== "closed") {
    app.pub.removeTrack(sender);
    await renegotiatePublisher({});
  }
}

// On leave: the capture ends with the call.
export function endShare() {
  if (share.stream) for (const t of share.stream.getTracks()) t.stop();
  share.stream = null;
  share.sender = null;
  setButton(false);
  for (const tile of [...$("stage").children]) tile.remove();
  $("stage").hidden = true;
}

function setButton(on) {
  const button = $("share-screen");
  button.setAttribute("aria-pressed", on ? "true" : "false");
  button.textContent = on ? "Stop sharing" : "Share screen";
}

function showTile(key, name, track) {
  let tile = $("stage").querySelector(`[data-tsid="${key}"]`);
  if (!tile) {
    tile = document.createElement("div");
    tile.className = "tile screen";
    tile.dataset.tsid = key;
    tile.innerHTML = '<div class="tile-head"><span class="tile-name"></span></div><video autoplay playsinline muted></video>';
    $("stage").appendChild(tile);
  }
  tile.querySelector(".tile-name").textContent = name;
  attach(tile.querySelector("video"), track);
  $("stage").hidden = false;
}

function removeTile(key) {
  const tile = $("stage").querySelector(`[data-tsid="${key}"]`);
  if (tile) tile.remove();
  $("stage").hidden = $("stage").children.length === 0;
}

// Everyone's shared screens now received (tsid -> {psid, track}): one stage tile each.
export function syncScreens(screens) {
  for (const tile of [...$("stage").children]) {
    const key = tile.dataset.tsid;
    if (key !== "local" && !screens.has(key)) removeTile(key);
  }
  for (const [tsid, { psid, track }] of screens) {
    const p = app.participants.get(psid);
    showTile(tsid, `${p ? participantName(p.info) : "someone"}'s screen`, track);
  }
}

// Test hook: the stage's tiles.
export function stageTiles() {
  return [...$("stage").children].map((tile) => {
    const video = tile.querySelector("video");
    return { tsid: tile.dataset.tsid, name: tile.querySelector(".tile-name").textContent, width: video.videoWidth, height: video.videoHeight };
  });
}
