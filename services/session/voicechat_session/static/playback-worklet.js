// Playback of the server's PCM16 (24 kHz by default) through a small jitter buffer, resampled to the
// context rate. The page posts audio chunks tagged with their turn; `flush` empties everything at once
// (barge-in, Stop, Reset). The processor counts what it really plays, per turn, and reports it to the page:
// these counters are the page's ground truth for "audio was played" and "nothing of that turn played after
// the flush".

import { StreamResampler } from "./resampler.js";

const REPORT_INTERVAL_S = 0.05;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.inputRate = opts.inputRate || 24000;
    this.minPrebuffer = Math.round((sampleRate * (opts.prebufferMs || 60)) / 1000);
    this.maxPrebuffer = Math.round((sampleRate * (opts.maxPrebufferMs || 240)) / 1000);
    this.prebuffer = this.minPrebuffer;
    this.resampler = new StreamResampler(this.inputRate, sampleRate);
    this.resamplerTurn = null;
    this.queue = []; // {data: Float32Array, offset: number, turn: number}
    this.buffered = 0; // output-rate samples waiting in the queue
    this.playing = false; // primed: the jitter buffer filled once for this stretch of audio
    this.ending = null; // turn whose audio_end arrived: play out its tail without waiting to prime
    this.currentTurn = null;
    this.received = 0; // input-rate samples accepted
    this.played = 0; // output-rate samples of audio actually rendered
    this.dropped = 0; // output-rate samples discarded by flushes
    this.underruns = 0;
    this.peak = 0; // loudest sample played: tells real speech from played silence
    this.playedByTurn = {};
    this.receivedByTurn = {};
    this.flushes = 0;
    this.sinceReport = 0;
    this.dirty = true;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (!msg) return;
    if (msg.type === "audio") {
      this.enqueue(msg.turn, new Int16Array(msg.pcm));
    } else if (msg.type === "end") {
      // Push the resampler's look-ahead through so the last milliseconds of the turn are heard too.
      if (this.resamplerTurn === msg.turn) {
        this.push(msg.turn, this.resampler.process(new Float32Array(this.resampler.latencySamples)));
      }
      this.resamplerTurn = null;
      this.resampler.reset();
      this.ending = msg.turn;
      this.dirty = true;
    } else if (msg.type === "rate") {
      this.inputRate = msg.rate;
      this.resampler = new StreamResampler(this.inputRate, sampleRate);
      this.resamplerTurn = null;
    } else if (msg.type === "flush") {
      const dropped = this.buffered;
      this.dropped += dropped;
      this.queue = [];
      this.buffered = 0;
      this.playing = false;
      this.ending = null;
      this.currentTurn = null;
      this.resampler.reset();
      this.resamplerTurn = null;
      this.prebuffer = this.minPrebuffer;
      this.flushes += 1;
      this.port.postMessage({ type: "flushed", reason: msg.reason, droppedNow: dropped, ...this.stats() });
    }
  }

  enqueue(turn, pcm) {
    if (pcm.length === 0) return;
    if (this.resamplerTurn !== turn) {
      this.resampler.reset();
      this.resamplerTurn = turn;
    }
    const floats = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) floats[i] = pcm[i] / 32768;
    this.received += pcm.length;
    this.receivedByTurn[turn] = (this.receivedByTurn[turn] || 0) + pcm.length;
    this.push(turn, this.resampler.process(floats));
  }

  push(turn, data) {
    if (data.length === 0) return;
    this.queue.push({ data, offset: 0, turn });
    this.buffered += data.length;
    this.dirty = true;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    const frames = out.length;
    let written = 0;
    if (!this.playing && this.buffered > 0) {
      const head = this.queue[0].turn;
      if (this.buffered >= this.prebuffer || this.ending === head) this.playing = true;
    }
    if (this.playing) {
      while (written < frames && this.queue.length > 0) {
        const chunk = this.queue[0];
        if (chunk.turn !== this.currentTurn) {
          this.currentTurn = chunk.turn;
          this.port.postMessage({ type: "turn_playing", turn: chunk.turn, ...this.stats() });
        }
        const n = Math.min(frames - written, chunk.data.length - chunk.offset);
        const part = chunk.data.subarray(chunk.offset, chunk.offset + n);
        out.set(part, written);
        for (let i = 0; i < n; i++) {
          const a = part[i] < 0 ? -part[i] : part[i];
          if (a > this.peak) this.peak = a;
        }
        chunk.offset += n;
        written += n;
        this.buffered -= n;
        this.played += n;
        this.playedByTurn[chunk.turn] = (this.playedByTurn[chunk.turn] || 0) + n;
        if (chunk.offset === chunk.data.length) this.queue.shift();
      }
      if (this.queue.length === 0) {
        this.playing = false;
        if (this.ending !== null && this.ending === this.currentTurn) {
          this.port.postMessage({ type: "drained", turn: this.currentTurn, ...this.stats() });
          this.ending = null;
          this.currentTurn = null;
          this.prebuffer = this.minPrebuffer;
        } else if (written < frames) {
          // The network or the synthesiser fell behind: wait for a deeper buffer before resuming.
          this.underruns += 1;
          this.prebuffer = Math.min(this.maxPrebuffer, this.prebuffer + Math.round(sampleRate * 0.02));
        }
      }
      this.dirty = true;
    }
    if (written < frames) out.fill(0, written);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);

    this.sinceReport += frames;
    if (this.dirty && this.sinceReport >= sampleRate * REPORT_INTERVAL_S) {
      this.port.postMessage({ type: "stats", ...this.stats() });
      this.sinceReport = 0;
      this.dirty = false;
    }
    return true;
  }

  stats() {
    return {
      received: this.received,
      played: this.played,
      buffered: this.buffered,
      dropped: this.dropped,
      underruns: this.underruns,
      peak: this.peak,
      flushes: this.flushes,
      playing: this.playing,
      prebufferMs: Math.round((this.prebuffer / sampleRate) * 1000),
      playedByTurn: { ...this.playedByTurn },
      receivedByTurn: { ...this.receivedByTurn },
    };
  }
}

registerProcessor("voicechat-playback", PlaybackProcessor);
