// Streaming band-limited resampler shared by the capture and playback worklets.
//
// Windowed-sinc interpolation (Blackman window) with a tabulated kernel: the cut-off sits just below the
// lower of the two Nyquist frequencies, so downsampling the microphone (44.1/48 kHz → 16 kHz) does not fold
// hiss into the speech band, and upsampling the 24 kHz voice does not add images. State carries across
// calls, so any block size works and consecutive blocks join without clicks.

const ZERO_CROSSINGS = 16; // kernel half-width in zero crossings: ~-70 dB stop band, ~0.7 ms delay at 24 kHz
const TABLE_RESOLUTION = 256; // kernel samples per zero crossing (linearly interpolated)

function buildKernel() {
  const size = ZERO_CROSSINGS * TABLE_RESOLUTION + 2;
  const table = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    const u = i / TABLE_RESOLUTION; // distance in zero crossings
    if (u >= ZERO_CROSSINGS) break;
    const sinc = u === 0 ? 1 : Math.sin(Math.PI * u) / (Math.PI * u);
    const w = 0.5 + u / (2 * ZERO_CROSSINGS); // Blackman window over [-ZC, ZC], evaluated at its right half
    const blackman = 0.42 - 0.5 * Math.cos(2 * Math.PI * w) + 0.08 * Math.cos(4 * Math.PI * w);
    table[i] = sinc * blackman;
  }
  return table;
}

const KERNEL = buildKernel();
const KERNEL_LIMIT = ZERO_CROSSINGS * TABLE_RESOLUTION;

export class StreamResampler {
  /**
   * @param {number} inRate input sample rate (Hz)
   * @param {number} outRate output sample rate (Hz)
   */
  constructor(inRate, outRate) {
    if (!(inRate > 0 && outRate > 0)) throw new RangeError(`bad rates ${inRate} → ${outRate}`);
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / outRate; // input samples advanced per output sample
    // Cut-off relative to the input Nyquist; 0.92 leaves room for the transition band.
    this.cutoff = Math.min(1, outRate / inRate) * 0.92;
    this.span = Math.ceil(ZERO_CROSSINGS / this.cutoff); // input samples needed on each side
    this.reset();
  }

  /** Forget all history (a new stream starts). */
  reset() {
    this.buf = new Float32Array(Math.max(4096, 4 * this.span));
    this.len = this.span; // leading zeros so that the first output is centred on the first input
    this.buf.fill(0, 0, this.len);
    this.t = this.span; // position of the next output sample, in buffer samples
  }

  /** Input samples still held back for look-ahead; push that many zeros to flush a stream's tail. */
  get latencySamples() {
    return this.span;
  }

  /**
   * @param {Float32Array} input
   * @returns {Float32Array} resampled output (may be empty)
   */
  process(input) {
    const needed = this.len + input.length;
    if (needed > this.buf.length) {
      const grown = new Float32Array(Math.max(needed, 2 * this.buf.length));
      grown.set(this.buf.subarray(0, this.len));
      this.buf = grown;
    }
    this.buf.set(input, this.len);
    this.len = needed;

    const { buf, span, step, cutoff } = this;
    const maxOut = Math.max(0, Math.ceil((this.len - span - this.t) / step) + 1);
    const out = new Float32Array(maxOut);
    const scale = cutoff * TABLE_RESOLUTION;
    let n = 0;
    let t = this.t;
    while (Math.floor(t) + span < this.len && n < maxOut) {
      const base = Math.floor(t);
      let acc = 0;
      for (let k = base - span + 1; k <= base + span; k++) {
        const x = Math.abs(t - k) * scale;
        if (x >= KERNEL_LIMIT) continue;
        const i = x | 0;
        const f = x - i;
        acc += buf[k] * (KERNEL[i] + (KERNEL[i + 1] - KERNEL[i]) * f);
      }
      out[n++] = acc * cutoff;
      t += step;
    }
    this.t = t;
    // Keep only what the next outputs still need.
    const drop = Math.floor(t) - span;
    if (drop > 0) {
      buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.t -= drop;
    }
    return n === maxOut ? out : out.subarray(0, n);
  }
}
