// Duet mode: play on a MIDI keyboard (Web MIDI), the computer keyboard or the on-screen keys;
// pause, and the model answers over a WebSocket (/ws/duet), note by note as it is decoded.
// The player's notes sound at once; the answer's are scheduled on the audio clock as they come and
// silenced the moment the player plays again. The roll scrolls with both parts in two colours.
"use strict";

const Duet = (() => {
  const LOOKAHEAD = 0.03;  // seconds between an answer's first note arriving and sounding
  const ROLL_SECONDS = 12;  // seconds of music across the roll
  const KEYS = "awsedftgyhujkolp;";  // C D E F G A B C D E on the home row, sharps above
  const state = {
    socket: null, t0: null, octave: 0, held: new Map(), notes: [], answer: null, cancelled: new Set(),
    settings: null, limits: null, stats: { latencies: [], browser: [] }, midi: null, colours: {},
  };
  const $ = (id) => document.getElementById(id);

  function now() { return state.t0 === null ? 0 : (performance.now() - state.t0) / 1000; }
  // The audio clock's time of a duet time (both clocks run together).
  function audioTime(t) { return StudioPiano.context().currentTime + (t - now()); }

  function say(text) { $("duet-status").textContent = text; }
  function showError(message) { const e = $("duet-error"); e.textContent = message || ""; e.hidden = !message; }

  function send(message) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(message));
  }

  // ----- the connection -----
  function connect() {
    if (state.socket && state.socket.readyState <= WebSocket.OPEN) return state.ready;
    state.ready = new Promise((resolve) => {
      const socket = new WebSocket(`ws://${location.host}/ws/duet`);
      state.socket = socket;
      socket.onmessage = (event) => receive(JSON.parse(event.data), resolve);
      socket.onclose = () => { say("disconnected: reload the page to play again"); document.body.dataset.duet = "closed"; };
    });
    return state.ready;
  }

  function receive(message, ready) {
    const handlers = {
      ready: () => {
        state.limits = message.limits;
        sendSettings();
        if ($("duet-model").value && $("duet-model").value !== "default") sendModel();
        document.body.dataset.duet = "ready";
        ready();
        say("Play something, then pause: the model answers.");
      },
      model: () => { document.body.dataset.duetModel = message.model; say(`${$("duet-model").selectedOptions[0].textContent} answers from now on`); },
      settings: () => { state.settings = message.settings; },
      answer: () => { state.answer = { number: message.answer, start: message.start, audio0: null, voices: new Map() }; say("the model answers…"); },
      notes: () => answerNotes(message),
      answer_end: () => {
        if (state.answer && state.answer.number === message.answer && message.stopped_by === "length") say("your turn");
      },
      saved: () => {
        say(`saved as ${message.take.name}`);
        $("duet-saved").replaceChildren(Object.assign(document.createElement("a"),
          { href: "/files/" + encodeURIComponent(message.take.midi), download: message.take.midi, textContent: message.take.midi }));
        document.dispatchEvent(new CustomEvent("studio:take", { detail: message.take }));
      },
      cleared: () => { state.notes = []; state.t0 = performance.now(); say("a new duet: play"); },
      stats: () => { state.stats.server = message; },
      pong: () => { state.stats.rtt = performance.now() - message.t; },
      error: () => showError(message.error),
    };
    (handlers[message.type] || (() => {}))();
  }

  function answerNotes(message) {
    const answer = state.answer;
    if (!answer || answer.number !== message.answer || state.cancelled.has(message.answer)) return;
    const received = performance.now();
    const ctx = StudioPiano.context();
    if (answer.audio0 === null) answer.audio0 = ctx.currentTime + LOOKAHEAD;
    let first = null;
    for (const event of message.notes) {
      if (event.pitch !== undefined) {
        const when = Math.max(answer.audio0 + event.start, ctx.currentTime);
        const voice = StudioPiano.noteOn(event.pitch, event.velocity, when);
        answer.voices.set(event.id, voice);
        const note = { pitch: event.pitch, start: now() + (when - ctx.currentTime), end: null, part: "model", voice };
        voice.note = note;
        state.notes.push(note);
        if (event.end !== null) release(voice, answer.audio0 + event.end);
        if (first === null) first = when;
      } else {
        release(answer.voices.get(event.id), answer.audio0 + event.end);
      }
    }
    if (first !== null && !answer.measured) {  // what the browser adds to the server's latency
      answer.measured = true;
      state.stats.browser.push({
        handling_ms: performance.now() - received, lookahead_ms: (first - ctx.currentTime) * 1000,
        base_latency_ms: (ctx.baseLatency || 0) * 1000, output_latency_ms: (ctx.outputLatency || 0) * 1000,
      });
    }
  }

  function release(voice, when) {
    if (!voice) return;
    StudioPiano.noteOff(voice, when);
    if (voice.note) voice.note.end = now() + Math.max(0, when - StudioPiano.context().currentTime);
  }

  // The player plays again: the answer falls silent at once.
  function silenceAnswer() {
    const answer = state.answer;
    if (!answer) return;
    state.cancelled.add(answer.number);
    const t = now();
    for (const voice of answer.voices.values()) {
      if (voice.note && voice.note.start > t) voice.note.cut = true;
      else if (voice.note && (voice.note.end === null || voice.note.end > t)) voice.note.end = t;
    }
    StudioPiano.stop(answer.voices.values());
    state.notes = state.notes.filter((note) => !note.cut);
    state.answer = null;
  }

  // ----- the player's keys -----
  async function start() {
    if (state.t0 === null) state.t0 = performance.now();
    await Promise.all([StudioPiano.resume(), connect()]);
    StudioPiano.load();
  }

  function keyDown(pitch, velocity) {
    if (pitch < 21 || pitch > 108 || state.held.has(pitch)) return;
    if (state.t0 === null) { start(); }
    silenceAnswer();
    const voice = StudioPiano.noteOn(pitch, velocity, 0);
    const note = { pitch, start: now(), end: null, part: "player", voice };
    state.held.set(pitch, note);
    state.notes.push(note);
    send({ type: "on", pitch, velocity, t: note.start });
    highlight(pitch, true);
  }

  function keyUp(pitch) {
    const note = state.held.get(pitch);
    if (!note) return;
    state.held.delete(pitch);
    note.end = now();
    StudioPiano.noteOff(note.voice, 0);
    send({ type: "off", pitch, t: note.end });
    highlight(pitch, false);
  }

  function computerKey(event, down) {
    if (!document.body.dataset.tab === "duet" || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target instanceof Element && event.target.closest("input, select, textarea")) return;
    const key = event.key.toLowerCase();
    if (down && (key === "z" || key === "x")) { state.octave = Math.max(-3, Math.min(3, state.octave + (key === "z" ? -1 : 1))); return; }
    const index = KEYS.indexOf(key);
    if (index < 0) return;
    event.preventDefault();
    if (event.repeat) return;
    const pitch = 60 + 12 * state.octave + index;
    if (down) keyDown(pitch, 80); else keyUp(pitch);
  }

  // MIDI: note on/off of any channel; a note on with velocity 0 is a note off.
  function midiMessage(event) {
    const [status, pitch, velocity] = event.data;
    const kind = status & 0xf0;
    if (kind === 0x90 && velocity > 0) keyDown(pitch, velocity);
    else if (kind === 0x80 || (kind === 0x90 && velocity === 0)) keyUp(pitch);
  }

  async function useMidi() {
    if (!navigator.requestMIDIAccess) { showError("this browser has no Web MIDI: use the computer keyboard or the keys below"); return; }
    try {
      state.midi = await navigator.requestMIDIAccess();
    } catch (error) { showError("MIDI was not allowed: " + error.message); return; }
    const names = [];
    for (const input of state.midi.inputs.values()) { input.onmidimessage = midiMessage; names.push(input.name); }
    $("duet-midi-status").textContent = names.length ? "listening to " + names.join(", ") : "no MIDI keyboard found";
    await start();
  }

  // ----- the on-screen keyboard (C3..C6) -----
  function buildKeyboard() {
    const board = $("duet-keys");
    const black = new Set([1, 3, 6, 8, 10]);
    for (let pitch = 48; pitch <= 84; pitch++) {
      const key = document.createElement("div");
      key.className = black.has(pitch % 12) ? "key black" : "key white";
      key.dataset.pitch = pitch;
      key.addEventListener("pointerdown", (e) => { e.preventDefault(); key.setPointerCapture(e.pointerId); keyDown(pitch, 80); });
      key.addEventListener("pointerup", () => keyUp(pitch));
      key.addEventListener("pointercancel", () => keyUp(pitch));
      board.append(key);
    }
  }

  function highlight(pitch, on) {
    const key = document.querySelector(`#duet-keys .key[data-pitch="${pitch}"]`);
    if (key) key.classList.toggle("down", on);
  }

  // ----- the roll: the last ROLL_SECONDS, both parts, scrolling -----
  function draw() {
    const canvas = $("duet-roll");
    const g = canvas.getContext("2d");
    const width = canvas.width = canvas.clientWidth;
    const height = canvas.height = canvas.clientHeight;
    g.fillStyle = "#111318";
    g.fillRect(0, 0, width, height);
    const t = now();
    const left = t - ROLL_SECONDS * 0.8;
    const pps = width / ROLL_SECONDS;
    const recent = state.notes.filter((n) => (n.end === null ? t : n.end) >= left);
    let low = 48, high = 84;
    for (const n of recent) { low = Math.min(low, n.pitch - 2); high = Math.max(high, n.pitch + 2); }
    const row = height / (high - low + 1);
    for (const n of recent) {
      const end = n.end === null ? t : Math.min(n.end, t);
      if (n.start > t) continue;
      g.fillStyle = n.part === "player" ? state.colours.player : state.colours.model;
      g.fillRect((n.start - left) * pps, (high - n.pitch) * row, Math.max(2, (end - n.start) * pps), Math.max(2, row - 1));
    }
    g.fillStyle = "rgba(255,255,255,0.6)";
    g.fillRect((t - left) * pps, 0, 1, height);
    requestAnimationFrame(draw);
  }

  // ----- settings, save, clear -----
  function readSettings() {
    return {
      type: "settings", silence: Number($("duet-silence").value), answer_seconds: Number($("duet-length").value),
      temperature: Number($("duet-temperature").value), texture: $("duet-texture").checked,
    };
  }
  function sendSettings() { send(readSettings()); }
  function sendModel() { send({ type: "model", model: $("duet-model").value || "default" }); }

  // The models to play with: those that can make takes (the page's list, from "studio:models").
  function showModels(models) {
    const select = $("duet-model");
    const chosen = select.value || "default";
    select.replaceChildren(...models.filter((m) => m.usable).map((m) => Object.assign(document.createElement("option"), { value: m.id, textContent: m.name })));
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "default";
  }

  function init(config) {
    state.colours = { player: config.colours.primer, model: config.colours.continuation };
    buildKeyboard();
    document.addEventListener("keydown", (e) => computerKey(e, true));
    document.addEventListener("keyup", (e) => computerKey(e, false));
    $("duet-start").addEventListener("click", start);
    $("duet-midi").addEventListener("click", useMidi);
    $("duet-save").addEventListener("click", async () => { await start(); for (const p of [...state.held.keys()]) keyUp(p); send({ type: "save" }); say("saving…"); });
    $("duet-clear").addEventListener("click", async () => { await start(); silenceAnswer(); send({ type: "clear" }); });
    for (const id of ["duet-silence", "duet-length", "duet-temperature", "duet-texture"]) $(id).addEventListener("change", sendSettings);
    $("duet-model").addEventListener("change", sendModel);
    document.addEventListener("studio:models", (event) => showModels(event.detail));
    requestAnimationFrame(draw);
  }

  return { init, start, keyDown, keyUp, state, send, midiMessage };
})();
