// Microphone capture: downmix to mono, resample from the context rate (whatever the device runs at) to the
// rate announced in `start`, and hand PCM16 LE frames to the page, which sends them as binary WebSocket
// messages. Runs on the audio rendering thread: no allocation beyond one frame buffer per emitted frame.

import { StreamResampler } from "./resampler.js";

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.targetRate = opts.targetRate || 16000;
    // 512 samples at 16 kHz = 32 ms: one Silero VAD window per frame, ~31 messages per second.
    this.frameSamples = opts.frameSamples || 512;
    this.resampler = new StreamResampler(sampleRate, this.targetRate);
    this.frame = new Int16Array(this.frameSamples);
    this.fill = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.mono = new Float32Array(128);
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === "stop") this.running = false;
    };
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    // No channels: the track ended or has not started yet; keep the node alive.
    if (!input || input.length === 0 || !input[0]) return true;
    const frames = input[0].length;
    if (this.mono.length !== frames) this.mono = new Float32Array(frames);
    const mono = this.mono;
    const channels = input.length;
    if (channels === 1) {
      mono.set(input[0]);
    } else {
      mono.fill(0);
      for (let c = 0; c < channels; c++) {
        const ch = input[c];
        for (let i = 0; i < frames; i++) mono[i] += ch[i];
      }
      for (let i = 0; i < frames; i++) mono[i] /= channels;
    }
    const out = this.resampler.process(mono);
    for (let i = 0; i < out.length; i++) {
      let s = out[i];
      if (s > 1) s = 1;
      else if (s < -1) s = -1;
      const a = s < 0 ? -s : s;
      if (a > this.peak) this.peak = a;
      this.sumSquares += s * s;
      this.frame[this.fill++] = s < 0 ? Math.round(s * 0x8000) : Math.round(s * 0x7fff);
      if (this.fill === this.frameSamples) this.emit();
    }
    return true;
  }

  emit() {
    const pcm = this.frame.buffer;
    const rms = Math.sqrt(this.sumSquares / this.frameSamples);
    this.port.postMessage({ type: "frame", pcm, rms, peak: this.peak }, [pcm]);
    this.frame = new Int16Array(this.frameSamples);
    this.fill = 0;
    this.sumSquares = 0;
    this.peak = 0;
  }
}

registerProcessor("voicechat-capture", CaptureProcessor);
