// Gapless playback of 24 kHz mono float32 chunks through a ring buffer, resampled to the
// context's rate by linear interpolation (upsampling 24 kHz -> 44.1/48 kHz needs no
// anti-alias filter; the source is already band-limited to 12 kHz).
//
// Messages in:  {type:"push", turn, samples: Float32Array}  audio of one turn, in order
//               {type:"end", turn}      the turn sent all its audio: report when it has played out
//               {type:"clear"}          stop now: drop everything buffered (barge-in)
// Messages out: {type:"stats", ...}     about every 50 ms while anything plays, and on changes
//               {type:"turn_done", turn, played}   every sample of that turn has been played
//               {type:"cleared", dropped, turns}   after "clear"
// Counting is in 24 kHz source samples: `played` counts samples that went out to the
// speakers, not samples received.

const IN_RATE = 24000;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = IN_RATE / sampleRate; // source samples per output sample
    this.ring = new Float32Array(IN_RATE * 30);
    this.read = 0;
    this.size = 0; // samples buffered
    this.segs = []; // [{turn, n}] or [{turn, end:true}] in ring order
    this.frac = 1; // position between `a` (previous source sample) and `b` (current one)
    this.a = 0;
    this.b = 0;
    this.played = 0;
    this.received = 0;
    this.underruns = 0;
    this.dropped = 0;
    this.turnPlayed = {}; // turn -> samples played
    this.open = new Set(); // turns with audio but no "end" yet
    this.playing = false; // had audio in the last quantum
    this.quanta = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(m) {
    if (m.type === "push") {
      this.write(m.samples);
      this.received += m.samples.length;
      const last = this.segs[this.segs.length - 1];
      if (last && !last.end && last.turn === m.turn) last.n += m.samples.length;
      else this.segs.push({ turn: m.turn, n: m.samples.length });
      if (!(m.turn in this.turnPlayed)) this.turnPlayed[m.turn] = 0;
      this.open.add(m.turn);
    } else if (m.type === "end") {
      this.open.delete(m.turn);
      this.segs.push({ turn: m.turn, end: true });
      this.flushEnds();
    } else if (m.type === "clear") {
      const dropped = this.size;
      this.dropped += dropped;
      this.size = 0;
      this.read = 0;
      this.segs = [];
      this.open.clear();
      this.frac = 1;
      this.a = 0;
      this.b = 0;
      this.port.postMessage({ type: "cleared", dropped, turns: { ...this.turnPlayed } });
      this.postStats();
    }
  }

  write(x) {
    if (this.size + x.length > this.ring.length) {
      // grow: keep the buffered audio, in order, at the start of a bigger ring
      const bigger = new Float32Array(Math.max(this.ring.length * 2, this.size + x.length));
      for (let i = 0; i < this.size; i++) bigger[i] = this.ring[(this.read + i) % this.ring.length];
      this.ring = bigger;
      this.read = 0;
    }
    const cap = this.ring.length;
    let w = (this.read + this.size) % cap;
    const first = Math.min(x.length, cap - w);
    this.ring.set(x.subarray(0, first), w);
    if (first < x.length) this.ring.set(x.subarray(first), 0);
    this.size += x.length;
  }

  // one source sample leaves the ring: it is about to be heard
  pop() {
    const v = this.ring[this.read];
    this.read = (this.read + 1) % this.ring.length;
    this.size -= 1;
    this.played += 1;
    const seg = this.segs[0];
    if (seg && !seg.end) {
      this.turnPlayed[seg.turn] = (this.turnPlayed[seg.turn] || 0) + 1;
      if (--seg.n === 0) {
        this.segs.shift();
        this.flushEnds();
      }
    }
    return v;
  }

  flushEnds() {
    while (this.segs.length && this.segs[0].end) {
      const { turn } = this.segs.shift();
      this.port.postMessage({ type: "turn_done", turn, played: this.turnPlayed[turn] || 0 });
    }
  }

  postStats() {
    const seg = this.segs.find((s) => !s.end);
    this.port.postMessage({
      type: "stats",
      played: this.played,
      received: this.received,
      buffered: this.size,
      underruns: this.underruns,
      dropped: this.dropped,
      turn: seg ? seg.turn : null,
      turns: { ...this.turnPlayed },
    });
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    const had = this.size > 0;
    let starved = false;
    for (let i = 0; i < out.length; i++) {
      while (this.frac >= 1) {
        if (this.size === 0) {
          starved = true;
          break;
        }
        this.a = this.b;
        this.b = this.pop();
        this.frac -= 1;
      }
      if (this.frac >= 1) {
        // nothing left: ease the last sample to zero over the rest of the quantum (no click)
        this.b *= 0.9;
        this.a = this.b;
        out[i] = this.b;
        continue;
      }
      out[i] = this.a + (this.b - this.a) * this.frac;
      this.frac += this.step;
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (had && starved && this.open.size > 0) this.underruns += 1; // ran dry before a turn's end
    const playing = had || this.size > 0;
    this.quanta += 1;
    // ~50 ms of 128-sample quanta, and once more when playback stops
    if ((playing && this.quanta * 128 >= sampleRate / 20) || playing !== this.playing) {
      this.quanta = 0;
      this.postStats();
    }
    this.playing = playing;
    return true;
  }
}

registerProcessor("playback-processor", PlaybackProcessor);
