// Microphone capture: the context's rate -> 16 kHz mono int16, posted as 20 ms frames (320 samples).
//
// Resampling: a 95-tap Blackman-windowed-sinc low-pass at the input rate (-6 dB at
// 7.5 kHz, flat to about 6 kHz, stopband from about 9-10 kHz, so little folds back
// around the 8 kHz Nyquist of the output), then linear interpolation at the output
// instants, which is accurate on a signal this oversampled (3x at 48 kHz).

const OUT_RATE = 16000;
const FRAME = 320; // 20 ms at 16 kHz
const TAPS = 95; // odd: the filter delays by a whole (TAPS-1)/2 input samples

function lowpass(rate) {
  const cutoff = Math.min(7500, 0.45 * rate) / rate; // cycles per input sample
  const h = new Float32Array(TAPS);
  const mid = (TAPS - 1) / 2;
  let sum = 0;
  for (let i = 0; i < TAPS; i++) {
    const n = i - mid;
    const sinc = n === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * n) / (Math.PI * n);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (TAPS - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (TAPS - 1)); // Blackman
    h[i] = sinc * w;
    sum += h[i];
  }
  for (let i = 0; i < TAPS; i++) h[i] /= sum; // unity gain at DC
  return h;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.passthrough = sampleRate === OUT_RATE;
    this.h = lowpass(sampleRate);
    this.hist = new Float32Array(TAPS * 2); // doubled ring: a contiguous window at any offset
    this.hpos = 0;
    this.k = -1; // index of the newest filtered input sample
    this.prev = 0; // filtered sample k-1
    this.next = 0; // input time of the next output sample
    this.frame = new Int16Array(FRAME);
    this.fill = 0;
    this.sumSq = 0;
  }

  emit(v) {
    const s = v >= 1 ? 32767 : v <= -1 ? -32768 : Math.round(v * 32767);
    this.frame[this.fill++] = s;
    this.sumSq += v * v;
    if (this.fill === FRAME) {
      const rms = Math.sqrt(this.sumSq / FRAME);
      this.port.postMessage({ type: "frame", pcm: this.frame.buffer, rms }, [this.frame.buffer]);
      this.frame = new Int16Array(FRAME);
      this.fill = 0;
      this.sumSq = 0;
    }
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true; // no source connected yet
    const ch0 = input[0];
    const ch1 = input.length > 1 ? input[1] : null;
    const h = this.h;
    for (let i = 0; i < ch0.length; i++) {
      const x = ch1 ? 0.5 * (ch0[i] + ch1[i]) : ch0[i];
      if (this.passthrough) {
        this.emit(x);
        continue;
      }
      // push into the doubled ring and filter over the last TAPS samples
      this.hist[this.hpos] = x;
      this.hist[this.hpos + TAPS] = x;
      this.hpos = (this.hpos + 1) % TAPS;
      let y = 0;
      for (let j = 0; j < TAPS; j++) y += h[j] * this.hist[this.hpos + j];
      this.k += 1;
      // outputs whose time falls in (k-1, k]: interpolate between the two filtered neighbours
      while (this.next <= this.k) {
        const frac = this.next - (this.k - 1);
        this.emit(this.prev + (y - this.prev) * frac);
        this.next += this.step;
      }
      this.prev = y;
    }
    return true;
  }
}

registerProcessor("capture-processor", CaptureProcessor);
