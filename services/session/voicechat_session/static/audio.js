// Audio in and out through one AudioContext: the capture worklet turns the microphone into PCM16 frames at
// the rate announced in `start`; the playback worklet plays the server's PCM16 through a jitter buffer and
// counts what it really renders, per turn.

import { DEFAULT_INPUT_SAMPLE_RATE } from "./protocol.js";

export const CAPTURE_RATE = DEFAULT_INPUT_SAMPLE_RATE; // what the page announces in `start`
const CAPTURE_FRAME_SAMPLES = 512; // 32 ms frames

const MIC_ERROR_TEXT = {
  NotAllowedError: "Microphone access was blocked. Allow it in the browser's site settings, then press Start.",
  SecurityError: "Microphone access was blocked. Allow it in the browser's site settings, then press Start.",
  NotFoundError: "No microphone was found. Connect one and press Start.",
  NotReadableError: "The microphone is in use by another application or could not be opened.",
  OverconstrainedError: "The microphone does not support the requested settings.",
  AbortError: "Opening the microphone was interrupted. Press Start to try again.",
};

// Why the microphone did not open, in words a person can act on.
export function micErrorText(err) {
  if (err.name === "InsecureContext") {
    return "The microphone needs a secure page: open this site over https:// (or on localhost).";
  }
  return MIC_ERROR_TEXT[err.name] || `Could not start the microphone: ${err.message}`;
}

// Speech sits around -30..-15 dBFS: map -60..-10 dBFS onto 0..1, rising at once and falling smoothly.
function nextMicLevel(previous, rms) {
  const db = 20 * Math.log10(Math.max(rms, 1e-6));
  const level = Math.min(1, Math.max(0, (db + 60) / 50));
  return level > previous ? level : 0.8 * previous + 0.2 * level;
}

// hooks: played() after the player's counters changed · frame(pcm) per microphone frame ·
// micFailed(text) when the microphone stops by itself · error(text).
// `state` is the page state: the player's counters, the context's rate and state and the mic level land there.
export class AudioIO {
  constructor(state, hooks) {
    this.state = state;
    this.hooks = hooks;
    this.ctx = null;
    this.ready = null; // Promise<void> while the worklets load
    this.player = null;
    this.micStream = null;
    this.micSource = null;
    this.captureNode = null;
  }

  // Created inside a click handler (a user gesture), so the context may start without autoplay exemptions.
  ensure() {
    if (!this.ctx) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx || !("audioWorklet" in Ctx.prototype)) {
        return Promise.reject(new Error("This browser cannot process audio here (no AudioWorklet)."));
      }
      const ctx = new Ctx({ latencyHint: "interactive" });
      this.ctx = ctx;
      this.state.contextSampleRate = ctx.sampleRate;
      ctx.onstatechange = () => {
        this.state.contextState = ctx.state;
      };
      this.state.contextState = ctx.state;
      this.ready = (async () => {
        await ctx.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
        await ctx.audioWorklet.addModule(new URL("playback-worklet.js", import.meta.url));
        const player = new AudioWorkletNode(ctx, "voicechat-playback", {
          numberOfInputs: 0,
          numberOfOutputs: 1,
          outputChannelCount: [1],
          processorOptions: { inputRate: this.state.outputSampleRate, prebufferMs: 60 },
        });
        player.port.onmessage = (event) => this.onPlayerMessage(event.data);
        player.onprocessorerror = () =>
          this.hooks.error("Audio playback stopped because of an internal error. Reload the page.");
        player.connect(ctx.destination);
        this.player = player;
      })();
    }
    const resumed = this.ctx.state === "suspended" ? this.ctx.resume() : Promise.resolve();
    return Promise.all([this.ready, resumed]).then(() => {
      this.state.contextState = this.ctx.state;
    });
  }

  // ---------------------------------------------------------------------------------------- playback
  get canPlay() {
    return this.player !== null;
  }

  // PCM16 of `turn`; the buffer is transferred to the worklet.
  play(turn, buffer) {
    this.player.port.postMessage({ type: "audio", turn, pcm: buffer }, [buffer]);
  }

  endTurn(turn) {
    this.player?.port.postMessage({ type: "end", turn });
  }

  setOutputRate(rate) {
    this.player?.port.postMessage({ type: "rate", rate });
  }

  flush(reason) {
    this.player?.port.postMessage({ type: "flush", reason });
  }

  onPlayerMessage(m) {
    const s = this.state;
    if (m.type === "turn_playing") s.playingTurn = m.turn;
    if (m.received !== undefined) {
      s.samplesReceived = m.received;
      s.samplesPlayed = m.played;
      s.bufferedSamples = m.buffered;
      s.samplesFlushed = m.dropped;
      s.underruns = m.underruns;
      s.playedPeak = m.peak;
      s.flushes = m.flushes;
      s.playedByTurn = m.playedByTurn;
      s.receivedByTurn = m.receivedByTurn;
      s.assistantSpeaking = m.type !== "drained" && (m.playing || m.buffered > 0);
      this.hooks.played();
    }
  }

  // ---------------------------------------------------------------------------------------- capture
  // Opens the microphone and starts emitting frames; throws (after releasing what it opened) on failure.
  async openMic() {
    try {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw Object.assign(new Error("insecure"), { name: "InsecureContext" });
      }
      const audioPromise = this.ensure();
      this.micStream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: { ideal: 1 } },
      });
      await audioPromise;
      this.micSource = this.ctx.createMediaStreamSource(this.micStream);
      this.captureNode = new AudioWorkletNode(this.ctx, "voicechat-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 0,
        processorOptions: { targetRate: CAPTURE_RATE, frameSamples: CAPTURE_FRAME_SAMPLES },
      });
      this.captureNode.port.onmessage = (event) => this.onMicFrame(event.data);
      this.captureNode.onprocessorerror = () =>
        this.hooks.micFailed("The microphone stopped because of an internal error. Press Start again.");
      this.micSource.connect(this.captureNode);
      for (const track of this.micStream.getAudioTracks()) {
        track.onended = () => this.hooks.micFailed("The microphone was disconnected.");
      }
    } catch (err) {
      this.releaseMic();
      throw err;
    }
  }

  releaseMic() {
    if (this.captureNode) {
      this.captureNode.port.postMessage({ type: "stop" });
      this.captureNode.port.onmessage = null;
      this.captureNode.disconnect();
      this.captureNode = null;
    }
    this.micSource?.disconnect();
    this.micSource = null;
    this.micStream?.getTracks().forEach((t) => t.stop());
    this.micStream = null;
    this.state.micLevel = 0;
  }

  onMicFrame(m) {
    if (m.type !== "frame") return;
    this.state.micLevel = nextMicLevel(this.state.micLevel, m.rms);
    this.hooks.frame(m.pcm);
  }
}
