// Connection quality (the server's connection_quality events): three bars in each
// tile's head, and a hint under the controls while our own link is poor or lost.

import { $, app } from "./state.js";

const BARS = { excellent: 3, good: 2, poor: 1, lost: 0 };

function tileOf(sid) {
  if (app.me && sid === app.me.sid) return $("local-tile");
  const p = app.participants.get(sid);
  return p ? p.tile : null;
}

function drawBars(tile, quality) {
  const head = tile.querySelector(".tile-head");
  let bars = head.querySelector(".quality");
  if (!bars) {
    bars = document.createElement("span");
    bars.className = "quality";
    bars.innerHTML = "<i></i><i></i><i></i>";
    head.insertBefore(bars, head.firstChild);
  }
  bars.dataset.quality = quality;
  bars.title = `connection: ${quality}`;
  bars.setAttribute("aria-label", bars.title);
  bars.querySelectorAll("i").forEach((bar, i) => bar.classList.toggle("on", i < BARS[quality]));
}

// Levels by participant sid; a tile made after its event (tracks arrive later) is
// drawn from here by refresh().
export const levels = new Map();

export function onQuality(msg) {
  for (const u of msg.updates || []) {
    levels.set(u.participant_sid, u.quality);
    const tile = tileOf(u.participant_sid);
    if (tile) drawBars(tile, u.quality);
    if (app.me && u.participant_sid === app.me.sid) {
      $("network-hint").hidden = !(u.quality === "poor" || u.quality === "lost");
    }
  }
}

export function refresh(sid) {
  const quality = levels.get(sid);
  const tile = tileOf(sid);
  if (quality && tile) drawBars(tile, quality);
}

export function forget(sid) {
  levels.delete(sid);
}
