// Recording: the room's recording badge, and the record button for a host.

import { $, app, fail } from "./state.js";

// The token's grants, read from its payload (the server checks them; this only decides
// whether to show the record button).
export function tokenGrants(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const payload = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return payload.video || {};
  } catch {
    return {};
  }
}

// Everyone sees the badge while the room is recorded; hosts also get the button.
export function setRecording(id) {
  app.recording = id || null;
  $("rec-badge").hidden = !app.recording;
  const button = $("record");
  button.hidden = !app.canRecord;
  button.setAttribute("aria-pressed", String(!!app.recording));
  button.textContent = app.recording ? "Stop recording" : "Record";
}

export async function toggleRecording() {
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
