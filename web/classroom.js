// Classroom control in the page (docs/protocol.md, Moderation). A teacher (a token with
// roomAdmin) gets per-tile buttons (mute the microphone at the server, allow or revoke
// the microphone, remove) and a lock button; everyone gets a hand to raise. Students see
// a note when the teacher mutes their microphone or changes what they may publish.
// The server checks every request; this module only decides what to show.

export class Classroom {
  // request(type, fields) -> Promise of the reply; participants() -> Map sid -> {tile, info};
  // status(text, isError) shows a line; me() -> this page's participant {sid, identity}.
  constructor({ request, participants, status, me }) {
    this.request = request;
    this.participants = participants;
    this.status = status;
    this.me = me;
    this.admin = false;
    this.raised = false;
    this.locked = false;
    this.hand = document.getElementById("hand");
    this.lock = document.getElementById("lock");
    this.note = document.getElementById("teacher-note");
    this.hand.addEventListener("click", () => this.act("raise_hand", { raised: !this.raised }));
    this.lock.addEventListener("click", () => this.act("set_room_locked", { locked: !this.locked }));
  }

  joined(isAdmin) {
    this.admin = !!isAdmin;
    this.lock.hidden = !this.admin;
    this.hand.hidden = false;
    this.refresh();
  }

  reset() {
    this.admin = this.raised = this.locked = false;
    this.lock.hidden = this.hand.hidden = true;
    this.note.hidden = true;
    this.setHand(false);
    this.setLocked(false);
  }

  async act(type, fields) {
    try {
      return await this.request(type, fields);
    } catch (e) {
      this.status(`${type}: ${e.code || "error"}: ${e.message || e}`, true);
      return null;
    }
  }

  setHand(raised) {
    this.raised = raised;
    this.hand.setAttribute("aria-pressed", String(raised));
    this.hand.textContent = raised ? "Lower hand" : "Raise hand";
  }

  setLocked(locked) {
    this.locked = locked;
    this.lock.setAttribute("aria-pressed", String(locked));
    this.lock.textContent = locked ? "Unlock room" : "Lock room";
  }

  showNote(text) {
    this.note.textContent = text;
    this.note.hidden = !text;
  }

  // Per-tile controls for a teacher (idempotent: called after every event).
  refresh() {
    for (const [sid, p] of this.participants()) {
      let box = p.tile.querySelector(".mod");
      if (!this.admin) {
        if (box) box.remove();
        continue;
      }
      if (!box) {
        box = document.createElement("span");
        box.className = "mod";
        box.innerHTML =
          '<button type="button" data-act="mute">mute</button>' +
          '<button type="button" data-act="allow">allow mic</button>' +
          '<button type="button" data-act="remove">remove</button>';
        box.addEventListener("click", (ev) => this.onTileButton(sid, ev.target.dataset.act));
        p.tile.querySelector(".tile-head").appendChild(box);
      }
      const info = p.info || {};
      const mic = (info.tracks || []).find((t) => t.kind === "audio");
      const mute = box.querySelector('[data-act="mute"]');
      mute.disabled = !mic;
      mute.textContent = mic && mic.muted ? "unmute" : "mute";
      const perms = info.permissions || {};
      const allowed = perms.canPublish && (!perms.canPublishSources || perms.canPublishSources.includes("microphone"));
      box.querySelector('[data-act="allow"]').textContent = allowed ? "revoke mic" : "allow mic";
    }
  }

  onTileButton(sid, act) {
    const p = this.participants().get(sid);
    if (!p || !act) return;
    const info = p.info || {};
    const identity = info.identity;
    if (act === "remove") {
      this.act("remove_participant", { identity });
    } else if (act === "mute") {
      const mic = (info.tracks || []).find((t) => t.kind === "audio");
      if (mic) this.act("mute_published_track", { identity, track_sid: mic.sid, muted: !mic.muted });
    } else if (act === "allow") {
      const perms = info.permissions || {};
      const allowed = perms.canPublish && (!perms.canPublishSources || perms.canPublishSources.includes("microphone"));
      const permission = allowed
        ? { canPublish: false }
        : { canPublish: true, canPublishSources: [...new Set([...(perms.canPublishSources || []), "microphone"])] };
      this.act("update_participant", { identity, permission });
    }
  }

  // Every server event passes here first.
  onEvent(msg) {
    const mine = this.me() && msg.participant_sid === this.me().sid;
    const p = msg.participant_sid ? this.participants().get(msg.participant_sid) : null;
    switch (msg.type) {
      case "hand_raised":
        if (mine) this.setHand(msg.raised);
        if (p) {
          p.info.hand_raised = msg.raised;
          p.tile.classList.toggle("hand-raised", msg.raised);
        }
        break;
      case "room_locked":
        this.setLocked(msg.locked);
        this.status(msg.locked ? "The room is locked: nobody new can join." : "The room is unlocked.");
        break;
      case "permissions_changed":
        if (p) p.info.permissions = msg.permissions;
        if (mine) {
          const perms = msg.permissions || {};
          this.showNote(perms.canPublish ? `The teacher allows: ${(perms.canPublishSources || ["everything"]).join(", ")}.` : "The teacher has not allowed you to speak yet.");
        }
        break;
      case "track_muted":
        if (mine && msg.by) this.showNote(msg.muted ? "Your microphone was muted by the teacher." : "The teacher unmuted your microphone.");
        break;
      default:
        break;
    }
  }
}
