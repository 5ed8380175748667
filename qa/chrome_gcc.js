// Chrome's own GCC on a netem trace (qa/chrome_gcc.py): two pages, one direct peer
// connection. The sender publishes a noise camera (a canvas) and the fake microphone
// relay-only through
// netem's TURN relay (so every packet it sends crosses the trace link), the receiver
// answers with its host candidates. Signaling goes through Python (page.evaluate):
// whole SDPs after gathering, no trickle.
// Sender side, window.__gcc.sample() returns and clears what getStats said every
// `sampleMs`: Date.now(), the selected pair's availableOutgoingBitrate (Chrome's
// estimate), the video sender's target and bytes, the receiver's reported loss and
// the ICE state.
(() => {
  const st = { pc: null, samples: [], timer: null };
  const GRAIN_ALPHA = 0.12;

  function gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (pc.iceGatheringState === "complete") {
          pc.removeEventListener("icegatheringstatechange", check);
          resolve();
        }
      };
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  async function poll() {
    const pc = st.pc;
    if (!pc) return;
    const report = await pc.getStats();
    let pairId = null;
    report.forEach((r) => {
      if (r.type === "transport" && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
    });
    const s = {
      t: Date.now(), aob: null, target: null, bytes: null, width: null, fps: null, limit: null,
      lost: null, ice: pc.iceConnectionState,
    };
    report.forEach((r) => {
      if (r.type === "candidate-pair" && r.id === pairId && r.availableOutgoingBitrate !== undefined) {
        s.aob = r.availableOutgoingBitrate;
      }
      if (r.type === "remote-inbound-rtp" && r.kind === "video") s.lost = r.fractionLost ?? null;
      if (r.type === "outbound-rtp" && r.kind === "video") {
        s.target = r.targetBitrate ?? null;
        s.bytes = r.bytesSent;
        s.width = r.frameWidth ?? null;
        s.fps = r.framesPerSecond ?? null;
        s.limit = r.qualityLimitationReason ?? null;
      }
    });
    st.samples.push(s);
  }

  // A camera the encoder cannot undershoot. Chrome's fake camera draws a flat frame
  // with a small moving shape, which VP8 codes in ~400 kbit/s at a 1.5 Mbit/s target,
  // so the link would measure the content, not the estimator; fresh noise every frame
  // is the opposite (every frame a keyframe's size, the encoder drops to 3-8 fps). In
  // between, like a real sensor: a detailed picture panning slowly (motion the encoder
  // predicts) under faint fresh noise (what it must pay for at a low QP and may drop
  // at a high one), so VP8 makes its target rate at its full frame rate.
  function noiseCamera(w, h, fps) {
    const noise = (cw, ch, seed) => {
      const c = document.createElement("canvas");
      c.width = cw;
      c.height = ch;
      const cx = c.getContext("2d");
      const img = cx.createImageData(cw, ch);
      const px = new Uint32Array(img.data.buffer);
      let x = seed;
      const fill = () => {
        for (let i = 0; i < px.length; i++) {
          x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
          px[i] = x | 0xff000000;
        }
        cx.putImageData(img, 0, 0);
      };
      fill();
      return { canvas: c, fill };
    };
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d");
    const scene = noise(w >> 1, h >> 1, 0x2545f491); // fixed detail, panned
    const grain = noise(Math.max(1, w >> 3), Math.max(1, h >> 3), 0x9e3779b9); // fresh each frame
    let n = 0;
    const draw = () => {
      n += 1;
      const dx = (n * 2) % w;
      ctx.globalAlpha = 1;
      ctx.drawImage(scene.canvas, -dx, 0, w, h);
      ctx.drawImage(scene.canvas, w - dx, 0, w, h);
      grain.fill();
      ctx.globalAlpha = GRAIN_ALPHA;
      ctx.drawImage(grain.canvas, 0, 0, w, h);
    };
    draw();
    setInterval(draw, 1000 / fps);
    return canvas.captureStream(fps).getVideoTracks()[0];
  }

  window.__gcc = {
    // -> offer SDP with the sender's relay candidates
    async sender(cfg) {
      const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      const pc = new RTCPeerConnection({
        iceServers: [{ urls: cfg.turn, username: cfg.user, credential: cfg.pass }],
        iceTransportPolicy: "relay",
      });
      st.pc = pc;
      const video = noiseCamera(cfg.width, cfg.height, cfg.fps);
      const [audio] = mic.getAudioTracks();
      pc.addTransceiver(video, {
        direction: "sendonly",
        sendEncodings: [{ maxBitrate: cfg.videoMaxBps }],
      });
      pc.addTransceiver(audio, { direction: "sendonly" });
      await pc.setLocalDescription();
      await gathered(pc);
      return pc.localDescription.sdp;
    },
    // -> answer SDP with the receiver's host candidates
    async receiver(offer) {
      const pc = new RTCPeerConnection({ iceServers: [] });
      st.pc = pc;
      await pc.setRemoteDescription({ type: "offer", sdp: offer });
      await pc.setLocalDescription();
      await gathered(pc);
      return pc.localDescription.sdp;
    },
    async accept(answer) {
      await st.pc.setRemoteDescription({ type: "answer", sdp: answer });
    },
    state() {
      return st.pc ? st.pc.connectionState : "none";
    },
    startSampling(ms) {
      if (st.timer === null) st.timer = setInterval(() => poll().catch(() => {}), ms);
    },
    sample() {
      const out = st.samples;
      st.samples = [];
      return out;
    },
    close() {
      if (st.timer !== null) clearInterval(st.timer);
      st.timer = null;
      if (st.pc) st.pc.close();
    },
  };
})();
