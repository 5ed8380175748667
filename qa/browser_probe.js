// The QA runner's probe in a Chromium participant's page (added before the page's own
// scripts by qa.participants.ChromiumParticipant; window.__qaConfig is set first).
//
// Publisher: getUserMedia returns a canvas clock instead of the fake camera: every frame
// carries its capture time as the stamp of clients/stamp.py (two rows of 16 black/white
// blocks from 1/8 of the height, each row 1/8 high: 24 bits of wall-clock ms mod 2^24,
// then an 8-bit check), and {audio} only when the scenario publishes audio only.
// With beeps, the microphone is a floor tone with a beep at every 2 s of the wall clock
// and every remote tile's audio is listened to for beep onsets (mouth-to-ear latency).
// Viewer: every remote tile's <video> is read back at requestVideoFrameCallback time
// (the frame the compositor shows), so glass-to-glass latency is Date.now() at display
// minus the stamp; the page's RTCPeerConnections are kept so Chrome's own inbound-rtp
// figures (freezeCount, totalFreezesDuration, concealedSamples, ...) can be read.
// window.__qa.sample() returns and clears what was measured since the last call.
(() => {
  const cfg = window.__qaConfig || {};
  const BITS_PER_ROW = 16, ROWS = 2, BAND_TOP = 0.125, ROW_HEIGHT = 0.125, MOD = 1 << 24;
  const DARK_MAX = 90, LIGHT_MIN = 160;
  const check = (v) => ((v ^ (v >> 8) ^ (v >> 16)) & 0xff) ^ 0xa5;

  // ------------------------------------------------------------- publisher: canvas clock
  function clockStream() {
    const w = cfg.width || 1280, h = cfg.height || 720, fps = cfg.fps || 30;
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d");
    const stream = canvas.captureStream(0);
    const [track] = stream.getVideoTracks();
    let n = 0;
    const draw = () => {
      n += 1;
      ctx.fillStyle = `hsl(${(n * 3) % 360}, 40%, 45%)`;
      ctx.fillRect(0, 0, w, h);
      ctx.fillStyle = "#ddd";
      ctx.fillRect((n * 9) % w, h / 2, w / 12, h / 2); // motion, so the encoder has work
      ctx.font = `${Math.round(h / 8)}px sans-serif`;
      ctx.fillText(String(n), w / 20, (h * 7) / 8);
      const now = Date.now();
      const v = Math.floor(now) % MOD;
      const word = [];
      for (let i = 0; i < 24; i++) word.push((v >> i) & 1);
      const c = check(v);
      for (let i = 0; i < 8; i++) word.push((c >> i) & 1);
      for (let r = 0; r < ROWS; r++) {
        const y0 = Math.round(h * (BAND_TOP + r * ROW_HEIGHT));
        const y1 = Math.round(h * (BAND_TOP + (r + 1) * ROW_HEIGHT));
        for (let i = 0; i < BITS_PER_ROW; i++) {
          const x0 = Math.round((w * i) / BITS_PER_ROW), x1 = Math.round((w * (i + 1)) / BITS_PER_ROW);
          ctx.fillStyle = word[r * BITS_PER_ROW + i] ? "rgb(235,235,235)" : "rgb(16,16,16)";
          ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
        }
      }
      track.requestFrame();
    };
    setInterval(draw, 1000 / fps);
    draw();
    return track;
  }

  // ------------------------------------------------------------- publisher: timed beeps
  // A floor tone with a louder 100 ms beep at every 2 s of the wall clock (as
  // clients/stamp.py's beep_gain), so a listener on this machine knows when each beep
  // left the mouth. The beeps are scheduled on the AudioContext clock, mapped from
  // Date.now() when scheduled.
  const BEEP_PERIOD_MS = 2000, BEEP_MS = 100, BEEP_LEVEL = 0.5, FLOOR_LEVEL = 0.03;
  const ONSET_LEVEL = 0.25, QUIET_MS = 500;
  function beepTrack() {
    const ac = new AudioContext({ sampleRate: 48000 });
    ac.resume();
    const osc = ac.createOscillator();
    osc.frequency.value = 660;
    const gain = ac.createGain();
    gain.gain.value = FLOOR_LEVEL;
    const dest = ac.createMediaStreamDestination();
    osc.connect(gain).connect(dest);
    osc.start();
    let scheduledUntil = 0;
    const schedule = () => {
      const wall = Date.now(), ctxNow = ac.currentTime;
      let next = Math.max(scheduledUntil, Math.ceil((wall + 50) / BEEP_PERIOD_MS) * BEEP_PERIOD_MS);
      for (; next < wall + 3000; next += BEEP_PERIOD_MS) {
        const at = ctxNow + (next - wall) / 1000;
        gain.gain.setValueAtTime(BEEP_LEVEL, at);
        gain.gain.setValueAtTime(FLOOR_LEVEL, at + BEEP_MS / 1000);
        scheduledUntil = next + BEEP_PERIOD_MS;
      }
    };
    schedule();
    setInterval(schedule, 500);
    return dest.stream.getAudioTracks()[0];
  }

  const md = navigator.mediaDevices;
  if (md && md.getUserMedia && cfg.publish) {
    const original = md.getUserMedia.bind(md);
    md.getUserMedia = async (constraints) => {
      const tracks = [];
      if (constraints && constraints.audio && cfg.publish.includes("audio")) {
        if (cfg.beeps) tracks.push(beepTrack());
        else tracks.push(...(await original({ audio: constraints.audio })).getAudioTracks());
      }
      if (constraints && constraints.video && cfg.publish.includes("video")) tracks.push(clockStream());
      return new MediaStream(tracks);
    };
  }

  // ------------------------------------------------------------- viewer: stamps at display
  const pcs = [];
  const Original = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Original {
    constructor(...args) {
      super(...args);
      pcs.push(this);
    }
  };

  const reader = document.createElement("canvas");
  reader.width = BITS_PER_ROW * 4;
  reader.height = ROWS * 4;
  const rctx = reader.getContext("2d", { willReadFrequently: true });
  const pending = {}; // tile sid -> {latency: [[epoch ms, ms]], rendered, unreadable}
  const watched = new WeakSet();

  function readStamp(video) {
    const vw = video.videoWidth, vh = video.videoHeight;
    if (!vw || !vh) return null;
    // Draw the band's middle halves only: each block becomes one 4x4 cell of the reader.
    rctx.drawImage(video, 0, vh * BAND_TOP, vw, vh * ROW_HEIGHT * ROWS, 0, 0, reader.width, reader.height);
    const px = rctx.getImageData(0, 0, reader.width, reader.height).data;
    let word = 0;
    for (let r = 0; r < ROWS; r++) {
      for (let i = 0; i < BITS_PER_ROW; i++) {
        let sum = 0;
        for (const [dx, dy] of [[1, 1], [2, 1], [1, 2], [2, 2]]) {
          const o = ((r * 4 + dy) * reader.width + i * 4 + dx) * 4;
          sum += 0.299 * px[o] + 0.587 * px[o + 1] + 0.114 * px[o + 2];
        }
        const mean = sum / 4;
        if (mean >= LIGHT_MIN) word += 2 ** (r * BITS_PER_ROW + i);
        else if (mean > DARK_MAX) return null;
      }
    }
    const v = word % MOD;
    return Math.floor(word / MOD) === check(v) ? v : null;
  }

  function watch(video, sid) {
    if (watched.has(video) || !video.requestVideoFrameCallback) return;
    watched.add(video);
    const onFrame = (now, meta) => {
      const entry = (pending[sid] ||= { latency: [], rendered: 0, unreadable: 0 });
      entry.rendered += 1;
      const shown = Date.now() + ((meta && meta.expectedDisplayTime) || now) - performance.now();
      const stamp = readStamp(video);
      if (stamp === null) entry.unreadable += 1;
      else {
        let d = (Math.floor(shown) - stamp) % MOD;
        if (d < 0) d += MOD;
        if (d > MOD / 2) d -= MOD;
        entry.latency.push([shown, d + (shown - Math.floor(shown))]);
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  // ------------------------------------------------------------- listener: beep onsets
  // An AudioWorklet sees every 128-sample quantum of the remote track as it plays; the
  // first sample over ONSET_LEVEL after QUIET_MS of floor is a beep's onset, and its
  // wall-clock time modulo the period is the mouth-to-ear latency.
  const WORKLET = `registerProcessor("qa-onsets", class extends AudioWorkletProcessor {
    constructor() { super(); this.lastLoud = -1e9; }
    process(inputs) {
      const ch = inputs[0] && inputs[0][0];
      if (!ch) return true;
      for (let i = 0; i < ch.length; i++) {
        if (Math.abs(ch[i]) > ${ONSET_LEVEL}) {
          const t = currentTime + i / sampleRate;
          if (t - this.lastLoud > ${QUIET_MS / 1000}) this.port.postMessage(t);
          this.lastLoud = t;
        }
      }
      return true;
    }
  });`;
  let listenCtx = null;
  const listened = new WeakSet();
  async function listen(audio, sid) {
    const stream = audio.srcObject;
    if (listened.has(audio) || !stream || !stream.getAudioTracks().length) return;
    listened.add(audio);
    if (!listenCtx) {
      listenCtx = new AudioContext({ sampleRate: 48000 });
      const url = URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" }));
      listenCtx.ready = listenCtx.audioWorklet.addModule(url);
    }
    const ac = listenCtx;
    await ac.ready;
    ac.resume();
    const node = new AudioWorkletNode(ac, "qa-onsets");
    node.port.onmessage = (ev) => {
      const heard = Date.now() + (ev.data - ac.currentTime) * 1000;
      const entry = (pending[sid] ||= { latency: [], rendered: 0, unreadable: 0 });
      (entry.beeps ||= []).push([heard, ((heard % BEEP_PERIOD_MS) + BEEP_PERIOD_MS) % BEEP_PERIOD_MS]);
    };
    ac.createMediaStreamSource(stream).connect(node);
  }

  setInterval(() => {
    for (const tile of document.querySelectorAll(".tile.remote[data-sid]")) {
      const video = tile.querySelector("video");
      if (video) watch(video, tile.dataset.sid);
      const audio = tile.querySelector("audio");
      if (audio && cfg.beeps) listen(audio, tile.dataset.sid).catch((e) => console.warn("qa listen", e));
    }
  }, 200);

  function trackOwners() {
    const owners = {};
    for (const tile of document.querySelectorAll(".tile.remote[data-sid]")) {
      for (const el of tile.querySelectorAll("video, audio")) {
        const s = el.srcObject;
        if (s && s.getTracks) for (const t of s.getTracks()) owners[t.id] = tile.dataset.sid;
      }
    }
    return owners;
  }

  async function inbound() {
    const owners = trackOwners();
    const out = [];
    for (const pc of pcs) {
      if (pc.connectionState === "closed") continue;
      const report = await pc.getStats();
      report.forEach((s) => {
        if (s.type !== "inbound-rtp") return;
        out.push({
          sid: owners[s.trackIdentifier] || null, kind: s.kind, ssrc: s.ssrc,
          framesDecoded: s.framesDecoded ?? null, framesRendered: s.framesRendered ?? null,
          freezeCount: s.freezeCount ?? null, totalFreezesDuration: s.totalFreezesDuration ?? null,
          packetsReceived: s.packetsReceived ?? 0, packetsLost: s.packetsLost ?? 0,
          concealedSamples: s.concealedSamples ?? null, silentConcealedSamples: s.silentConcealedSamples ?? null,
          totalSamplesReceived: s.totalSamplesReceived ?? null, concealmentEvents: s.concealmentEvents ?? null,
          jitterBufferDelay: s.jitterBufferDelay ?? null, jitterBufferEmittedCount: s.jitterBufferEmittedCount ?? null,
          jitterBufferMinimumDelay: s.jitterBufferMinimumDelay ?? null,
        });
      });
    }
    return out;
  }

  window.__qa = {
    async sample() {
      const tiles = {};
      for (const [sid, e] of Object.entries(pending)) {
        tiles[sid] = { latency: e.latency.splice(0), beeps: (e.beeps || []).splice(0),
                       rendered: e.rendered, unreadable: e.unreadable };
      }
      return { now: Date.now(), tiles, inbound: await inbound() };
    },
  };
})();
