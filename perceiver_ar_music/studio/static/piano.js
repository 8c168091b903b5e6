// The page's piano: samples of the takes' soundfont (from /api/piano, made by the studio with
// FluidSynth), played on the WebAudio clock; a small synthesis when there are none.
// StudioPiano.noteOn(pitch, velocity, when) -> voice; noteOff(voice, when); stop(voices).
"use strict";

const StudioPiano = (() => {
  const RELEASE = 0.12;  // seconds a released key takes to fall silent (a damper, not a cut)
  const state = { ctx: null, master: null, samples: [], kind: "none", soundfont: "", loading: null, scheduled: 0, voices: new Set() };

  function context() {
    if (!state.ctx) {
      state.ctx = new AudioContext({ latencyHint: "interactive" });
      state.master = state.ctx.createGain();
      state.master.gain.value = 0.8;
      state.master.connect(state.ctx.destination);
    }
    return state.ctx;
  }

  // Load the samples once (the studio renders them when it starts; a few MB, all local).
  async function load() {
    if (state.loading) return state.loading;
    state.loading = (async () => {
      const ctx = context();
      let info;
      try { info = await (await fetch("/api/piano")).json(); } catch (e) { info = { kind: "synth", reason: String(e) }; }
      if (info.kind !== "samples") {
        state.kind = "synth";
        state.reason = info.reason || "";
        return state;
      }
      const decoded = await Promise.all(info.samples.map(async (s) => {
        const data = await (await fetch("/piano/" + encodeURIComponent(s.name))).arrayBuffer();
        return { pitch: s.pitch, velocity: s.velocity, buffer: await ctx.decodeAudioData(data) };
      }));
      state.samples = decoded;
      state.kind = "samples";
      state.soundfont = info.soundfont;
      return state;
    })();
    return state.loading;
  }

  async function resume() {
    const ctx = context();
    if (ctx.state !== "running") await ctx.resume();
    return ctx;
  }

  function nearest(pitch, velocity) {
    let best = null, score = Infinity;
    for (const s of state.samples) {
      const d = Math.abs(s.pitch - pitch) * 1000 + Math.abs(s.velocity - velocity);
      if (d < score) { score = d; best = s; }
    }
    return best;
  }

  // Strike a key at audio time `when` (now if in the past); the voice rings until noteOff.
  function noteOn(pitch, velocity, when) {
    const ctx = context();
    when = Math.max(when === undefined ? 0 : when, ctx.currentTime);
    const gain = ctx.createGain();
    gain.connect(state.master);
    let source;
    const sample = state.kind === "samples" ? nearest(pitch, velocity) : null;
    if (sample) {
      source = ctx.createBufferSource();
      source.buffer = sample.buffer;
      source.playbackRate.value = Math.pow(2, (pitch - sample.pitch) / 12);
      gain.gain.value = Math.min(1.6, Math.pow(velocity / sample.velocity, 1.5));
    } else {  // synthesis: a bright attack that decays, like a struck string
      source = ctx.createOscillator();
      source.type = "triangle";
      source.frequency.value = 440 * Math.pow(2, (pitch - 69) / 12);
      const level = 0.25 * velocity / 127;
      gain.gain.setValueAtTime(0, when);
      gain.gain.linearRampToValueAtTime(level, when + 0.005);
      gain.gain.exponentialRampToValueAtTime(level * 0.05, when + 2.5);
    }
    source.connect(gain);
    source.start(when);
    const voice = { source, gain, when, pitch, ended: false };
    source.onended = () => { voice.ended = true; state.voices.delete(voice); gain.disconnect(); };
    state.voices.add(voice);
    state.scheduled += 1;
    return voice;
  }

  function noteOff(voice, when) {
    if (!voice || voice.ended || voice.released) return;
    const ctx = context();
    when = Math.max(when === undefined ? 0 : when, ctx.currentTime, voice.when);
    voice.released = true;
    voice.gain.gain.cancelScheduledValues(when);
    voice.gain.gain.setTargetAtTime(0, when, RELEASE / 3);
    voice.source.stop(when + RELEASE * 2);
  }

  // Silence voices at once (scheduled ones never sound).
  function stop(voices) {
    const ctx = context();
    const now = ctx.currentTime;
    for (const voice of voices) {
      if (voice.ended) continue;
      if (voice.when > now) { voice.source.stop(); voice.ended = true; continue; }
      voice.released = false;
      noteOff(voice, now);
    }
  }

  return { load, resume, noteOn, noteOff, stop, context, state, RELEASE };
})();
