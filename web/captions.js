// Live captions in the page (docs/protocol.md, Captions): a line under each speaker's
// tile (partials grey, finals white, fading a few seconds after the last words), a
// running transcript panel of the finals, and the CC button for a room admin.
//
// The server sends `caption` events for every utterance of every captioned audio track:
// partials while someone speaks, then one final with the same (track_sid, utterance)
// that replaces them. The join reply's `captions.recent` holds the finals of the last
// minute, so a late joiner's transcript does not start empty.

const FADE_AFTER_MS = 4000; // a final stays this long after its last words came
const TRANSCRIPT_LIMIT = 500; // lines kept in the panel

export class Captions {
  // tileFor(participantSid) -> the tile element (or null); nameOf(participantSid) -> a name.
  constructor({ tileFor, nameOf }) {
    this.tileFor = tileFor;
    this.nameOf = nameOf;
    this.state = { enabled: false, backend: null, language: null, by: null };
    this.lines = new Map(); // "track_sid/utterance" -> transcript <li>
    this.timers = new Map(); // participant sid -> fade timer
    this.panel = document.getElementById("transcript");
    this.list = document.getElementById("transcript-lines");
    this.badge = document.getElementById("cc-badge");
    this.button = document.getElementById("cc");
    this.canToggle = false;
  }

  // The join reply's `captions` (or null from a server without captions).
  joined(info, canToggle) {
    this.canToggle = !!canToggle;
    this.setState(info || { enabled: false });
    for (const event of (info && info.recent) || []) this.addFinal(event);
  }

  setState(state) {
    this.state = { enabled: !!state.enabled, backend: state.backend ?? null, language: state.language ?? null, by: state.by ?? null };
    this.badge.hidden = !this.state.enabled;
    this.badge.title = this.state.enabled ? `captions: ${this.state.backend} (${this.state.language})` : "";
    this.button.hidden = !this.canToggle;
    this.button.setAttribute("aria-pressed", String(this.state.enabled));
    this.button.textContent = this.state.enabled ? "CC off" : "CC";
    if (!this.state.enabled) for (const sid of [...this.timers.keys()]) this.clearLine(sid);
  }

  onCaption(event) {
    const tile = this.tileFor(event.participant_sid);
    if (tile) {
      const line = tile.querySelector(".caption");
      line.textContent = event.text;
      line.classList.toggle("partial", !event.final);
      line.classList.remove("fading");
      line.hidden = !event.text;
      clearTimeout(this.timers.get(event.participant_sid));
      const after = event.final ? FADE_AFTER_MS : FADE_AFTER_MS * 2; // a partial stuck on screen fades too
      this.timers.set(event.participant_sid, setTimeout(() => this.clearLine(event.participant_sid), after));
    }
    if (event.final) this.addFinal(event);
  }

  clearLine(participantSid) {
    clearTimeout(this.timers.get(participantSid));
    this.timers.delete(participantSid);
    const tile = this.tileFor(participantSid);
    const line = tile && tile.querySelector(".caption");
    if (!line) return;
    line.classList.add("fading");
    setTimeout(() => {
      if (line.classList.contains("fading")) {
        line.textContent = "";
        line.hidden = true;
        line.classList.remove("fading");
      }
    }, 600);
  }

  addFinal(event) {
    if (!event.text) return; // an empty final retracts partials: nothing to keep
    const key = `${event.track_sid}/${event.utterance}`;
    let li = this.lines.get(key);
    if (!li) {
      li = document.createElement("li");
      li.dataset.start = String(event.start_ms);
      li.innerHTML = '<time></time> <b></b> <span></span>';
      // In order of when the words were said (a late final of an earlier utterance too).
      const after = [...this.list.children].find((el) => Number(el.dataset.start) > event.start_ms);
      this.list.insertBefore(li, after || null);
      this.lines.set(key, li);
      while (this.list.children.length > TRANSCRIPT_LIMIT) {
        const first = this.list.firstElementChild;
        for (const [k, v] of this.lines) if (v === first) this.lines.delete(k);
        first.remove();
      }
    }
    li.querySelector("time").textContent = new Date(event.start_ms).toLocaleTimeString();
    li.querySelector("b").textContent = `${this.nameOf(event.participant_sid) || event.identity}:`;
    li.querySelector("span").textContent = event.text;
    this.list.scrollTop = this.list.scrollHeight;
  }

  togglePanel() {
    this.panel.hidden = !this.panel.hidden;
    document.getElementById("transcript-toggle").setAttribute("aria-pressed", String(!this.panel.hidden));
  }

  transcript() {
    return [...this.list.children].map((li) => ({
      name: li.querySelector("b").textContent.replace(/:$/, ""),
      text: li.querySelector("span").textContent,
      start_ms: Number(li.dataset.start),
    }));
  }

  reset() {
    for (const sid of [...this.timers.keys()]) clearTimeout(this.timers.get(sid));
    this.timers.clear();
    this.lines.clear();
    this.list.replaceChildren();
    this.canToggle = false;
    this.setState({ enabled: false });
  }
}
