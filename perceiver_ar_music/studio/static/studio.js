// The studio page: pick a primer, set generate's settings, follow a job live, list the takes.
// Every text from the server goes in with textContent; files are fetched by name from /files/.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { config: null, primer: { ref: null, label: "none" }, job: null, polling: null, shown: new Set() };

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = { error: `${response.status} ${response.statusText}` }; }
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function showError(id, message) {
  const el = $(id);
  el.textContent = message || "";
  el.hidden = !message;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// ----- settings: generate's flags, from /api/config, named in words (the flag as a hint) -----
function settingInput(field) {
  const input = el("input", { name: field.name, id: "setting-" + field.name, title: field.help });
  if (field.kind === "bool") {
    input.type = "checkbox";
    input.checked = Boolean(field.default);
  } else if (field.kind === "text") {  // a texture value: a number, xFACTOR or SECONDS:VALUE,...
    input.type = "text";
    input.placeholder = "the primer's";
  } else {
    input.type = "number";
    input.step = field.kind === "int" ? "1" : "any";
    if (field.default !== null) input.value = String(field.default);
    const placeholder = state.config.placeholders[field.name];
    input.placeholder = placeholder !== undefined ? String(placeholder) : (field.name === "seed" ? "random" : "off");
  }
  return input;
}

function buildSettings() {
  const main = el("div", { className: "grid", id: "main-settings" });
  const advanced = el("div", { className: "grid" });
  for (const field of state.config.fields) {
    if (field.name === "primer_seconds") continue;  // shown with the primer
    const name = el("span", { className: "name" }, field.label, el("code", { className: "flag" }, field.flag));
    (field.advanced ? advanced : main).append(el("label", { title: field.help }, name, settingInput(field)));
  }
  $("settings").append(main, el("details", { id: "advanced" }, el("summary", {}, "Advanced"), advanced));
}

// A take's settings back in the form (a value the take did not set: the form's default).
function useSettings(settings) {
  for (const field of state.config.fields) {
    const input = $("setting-" + field.name);
    if (!input || !(field.name in settings)) continue;
    const value = settings[field.name];
    if (input.type === "checkbox") input.checked = Boolean(value);
    else input.value = value === null || value === undefined ? "" : String(value);
  }
}

// The settings that made a take: its seed and randomness, and every other one not at its default.
function settingsSummary(settings) {
  const parts = [];
  for (const field of state.config.fields) {
    const value = settings[field.name];
    const always = field.name === "seed" || field.name === "temperature";  // what makes a take again
    if (value === null || value === undefined || value === "" || (!always && value === field.default)) continue;
    parts.push(`${field.label}: ${field.kind === "bool" ? (value ? "yes" : "no") : value}`);
  }
  return parts.join(" · ");
}

function settingsValues() {
  const values = {};
  for (const input of $("settings").querySelectorAll("input")) {
    values[input.name] = input.type === "checkbox" ? input.checked : input.value.trim();
  }
  values.primer_seconds = $("primer-seconds").value.trim();
  return values;
}

// ----- the primer -----
function primerQuery() {
  const params = new URLSearchParams({ primer: state.primer.ref || "" });
  const seconds = $("primer-seconds").value.trim();
  if (seconds) params.set("seconds", seconds);
  return params.toString();
}

async function showPrimer() {
  showError("primer-error", "");
  const img = $("primer-roll");
  if (!state.primer.ref) {
    $("primer-info").textContent = "The model starts from nothing.";
    img.hidden = true;
    return;
  }
  try {
    const info = await api("/api/primer?" + primerQuery());
    $("primer-info").textContent =
      `${state.primer.label}: ${info.notes} notes, ${info.seconds} s (${info.tokens} tokens)` +
      (info.remarks && info.remarks.length ? ". " + info.remarks.join(". ") : "");
    img.src = "/api/primer/roll.png?" + primerQuery();
    img.hidden = false;
  } catch (error) {
    $("primer-info").textContent = "";
    img.hidden = true;
    showError("primer-error", error.message);
  }
}

function setPrimer(ref, label, source) {
  state.primer = { ref, label };
  document.querySelector(`input[name=primer-source][value=${source}]`).checked = true;
  if (source === "take") {
    $("take-label").textContent = label;
    $("take-choice").hidden = false;
  }
  showPrimer();
}

async function uploadPrimer(file) {
  showError("primer-error", "");
  state.primer = { ref: null, label: "none" };
  try {
    const info = await api("/api/primer", {
      method: "POST", body: file,
      headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
    });
    setPrimer(info.primer, file.name, "upload");
  } catch (error) {
    $("primer-info").textContent = "";
    $("primer-roll").hidden = true;
    showError("primer-error", error.message);
  }
}

function onPrimerSource(event) {
  const source = event.target.value;
  if (source === "none") setPrimer(null, "none", "none");
  else if (source === "example") setPrimer("example", "the bundled example", "example");
  else if (source === "upload" && $("primer-file").files.length) uploadPrimer($("primer-file").files[0]);
}

// ----- listening while a take is made: its first sample's notes over /ws/jobs/ID -----
const LIVE_LOOKAHEAD = 0.25;  // seconds of margin between the first notes arriving and sounding
const live = { socket: null, audio0: null, voices: new Map(), scheduled: 0, firstAt: null, pressed: null };

function listenLive(job) {
  stopListening();
  if (!$("listen-live").checked) return;
  const socket = new WebSocket(`ws://${location.host}/ws/jobs/${job}`);
  live.socket = socket;
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type !== "notes" || live.socket !== socket) return;
    const ctx = StudioPiano.context();
    if (live.audio0 === null) live.audio0 = ctx.currentTime + LIVE_LOOKAHEAD;
    for (const note of message.notes) {
      if (note.pitch !== undefined) {
        const when = Math.max(live.audio0 + note.start, ctx.currentTime);
        const voice = StudioPiano.noteOn(note.pitch, note.velocity, when);
        live.voices.set(note.id, voice);
        live.scheduled += 1;
        if (live.firstAt === null) live.firstAt = { received_ms: performance.now() - live.pressed, sounds_ms: performance.now() - live.pressed + (when - ctx.currentTime) * 1000 };
        if (note.end !== null) StudioPiano.noteOff(voice, live.audio0 + note.end);
      } else if (live.voices.has(note.id)) {
        StudioPiano.noteOff(live.voices.get(note.id), live.audio0 + note.end);
      }
    }
  };
}

function stopListening() {
  if (live.socket) live.socket.close();
  StudioPiano.stop(live.voices.values());
  Object.assign(live, { socket: null, audio0: null, voices: new Map(), scheduled: 0, firstAt: null });
}

// ----- a job -----
async function generate() {
  showError("generate-error", "");
  live.pressed = performance.now();
  if ($("listen-live").checked) { StudioPiano.resume(); StudioPiano.load(); }  // (a click: audio may start)
  try {
    const status = await api("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ primer: state.primer.ref, settings: settingsValues(), model: $("model").value || "default" }),
    });
    startJob(status);
  } catch (error) {
    showError("generate-error", error.message);
  }
}

function startJob(status) {
  state.job = status.job;
  listenLive(status.job);
  $("generate").disabled = true;
  $("stop").disabled = false;
  const live = $("live");
  live.replaceChildren();
  for (let k = 0; k < status.num_samples; k++) {
    live.append(el("div", { className: "roll" }, el("img", { alt: `Sample ${k + 1} so far`, dataset: { sample: k } })));
  }
  showStatus(status);
  poll();
}

function showStatus(status) {
  let text = "";
  if (status.state === "queued") {
    text = status.position > 0 ? `waiting in the queue: ${status.position} ahead` : "waiting";
  } else if (status.state === "running" || status.state === "done") {
    text = `${status.tokens} tokens · ${Math.round(status.tokens_per_second)} tokens/s per take · ` +
      `${status.music_seconds.toFixed(1)} s of music`;
    if (status.state === "running" && status.stopping) text += " · stopping";
    if (status.state === "done") text += ` · done: ${status.takes.join(", ")}`;
  } else if (status.state === "cancelled") {
    text = "cancelled";
  }
  $("status").textContent = text;
  $("status").dataset.state = status.state;
  if (status.state === "failed") showError("generate-error", status.error);
}

function refreshLiveRolls(job) {
  for (const img of $("live").querySelectorAll("img")) {
    if (img.dataset.loading === "1") continue;  // one request per roll at a time
    img.dataset.loading = "1";
    img.onerror = () => { img.dataset.loading = "0"; };
    img.onload = () => {  // the newest music in view
      img.dataset.loading = "0";
      img.parentElement.scrollLeft = img.parentElement.scrollWidth;
    };
    img.src = `/api/jobs/${job}/roll/${img.dataset.sample}.png?t=${Date.now()}`;
  }
}

async function poll() {
  const job = state.job;
  let status;
  try {
    status = await api(`/api/jobs/${job}`);
  } catch (error) {
    showError("generate-error", error.message);
    return finishJob();
  }
  if (job !== state.job) return;
  showStatus(status);
  if (status.state === "running") refreshLiveRolls(job);
  if (["done", "failed", "cancelled"].includes(status.state)) {
    finishJob();
    if (status.state === "done") await loadTakes();
    return;
  }
  state.polling = setTimeout(poll, 400);
}

function finishJob() {
  $("generate").disabled = false;
  $("stop").disabled = true;
  $("live").replaceChildren();
}

async function stop() {
  stopListening();
  if (state.job) {
    try { await api(`/api/jobs/${state.job}/stop`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" }); } catch (error) { showError("generate-error", error.message); }
  }
}

// ----- the models to make takes with (the studio's own and those taught here) -----
function showModels(models) {
  const select = $("model");
  const chosen = select.value || "default";
  select.replaceChildren(...models.filter((m) => m.usable).map((m) => el("option", { value: m.id }, m.name)));
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "default";
}

// ----- takes -----
function takeCard(take) {
  const card = el("article", { className: "take", id: take.name, dataset: { name: take.name } });
  const from = take.primer ? `continues ${take.primer_label}` + (take.primer_seconds ? ` (first ${take.primer_seconds} s)` : "") : "from nothing";
  card.append(el("h3", {}, take.name));
  if (take.model_name) card.append(el("p", { className: "by muted" }, `by ${take.model_name}`));
  card.append(el("p", { className: "muted" }, take.kind === "duet"
    ? `a duet of ${take.new_seconds} s: ${take.player_notes} notes of yours, ${take.model_notes} of the model's; ${take.created}`
    : `${from}; ${take.new_tokens} new tokens, ${take.new_seconds} s of new music; stopped by ${take.stopped_by}; ${take.created}`));
  if (take.audio) {
    card.append(el("audio", { controls: true, preload: "metadata", src: "/files/" + encodeURIComponent(take.audio) }));
  } else {
    card.append(el("p", { className: "no-audio" }, take.audio_note || "no audio"));
  }
  if (take.settings) card.append(el("p", { className: "settings-used muted" }, settingsSummary(take.settings)));
  card.append(takeRoll(take, card.querySelector("audio")));
  const stats = el("dl", { className: "stats" });
  for (const [label, value] of take.stats) stats.append(el("div", {}, el("dt", {}, label), el("dd", {}, value)));
  card.append(stats);
  if (take.windows && take.windows.length) card.append(windowTable(take));
  const actions = el("div", { className: "actions" });
  const cont = el("button", { type: "button", className: "continue" }, "Continue this take");
  cont.onclick = () => { $("primer-seconds").value = ""; setPrimer(take.midi, take.name, "take"); generate(); };
  const reuse = el("button", { type: "button", className: "use-settings" }, "Use these settings");
  reuse.onclick = () => { useSettings(take.settings || {}); $("settings-panel").scrollIntoView({ behavior: "smooth" }); };
  const use = el("button", { type: "button", className: "use-primer" }, "Use as primer");
  use.onclick = () => { setPrimer(take.midi, take.name, "take"); $("primer-panel").scrollIntoView({ behavior: "smooth" }); };
  actions.append(cont, use, reuse, el("a", { href: "/files/" + encodeURIComponent(take.midi), download: take.midi }, "MIDI"));
  if (take.audio) {
    actions.append(el("a", { href: "/files/" + encodeURIComponent(take.audio), download: take.audio },
      take.audio.split(".").pop().toUpperCase()));
  }
  card.append(actions);
  return card;
}

// A take's piano roll, opened at the boundary, with a playhead that follows its audio.
function takeRoll(take, audio) {
  const geometry = take.roll_geometry;
  const img = el("img", { src: "/files/" + encodeURIComponent(take.roll), alt: `Piano roll of ${take.name}` });
  const playhead = el("div", { className: "playhead", hidden: true });
  const roll = el("div", { className: "roll" }, el("div", { className: "roll-inner" }, img, playhead));
  if (!geometry) return roll;
  const x = (seconds) => geometry.left + seconds * geometry.pixels_per_second;
  img.addEventListener("load", () => {  // the new music in view: the boundary a quarter from the left
    if (take.boundary_seconds) roll.scrollLeft = Math.max(0, x(take.boundary_seconds) - roll.clientWidth / 4);
  });
  if (audio) {
    const follow = () => {
      playhead.hidden = false;
      const at = x(audio.currentTime);
      playhead.style.left = `${at}px`;
      if (at < roll.scrollLeft + 20 || at > roll.scrollLeft + roll.clientWidth - 40) roll.scrollLeft = at - roll.clientWidth / 4;
      if (!audio.paused) requestAnimationFrame(follow);
    };
    audio.addEventListener("play", follow);
    audio.addEventListener("seeked", follow);
  }
  return roll;
}

// The continuation in windows, with the texture it was held to beside each window.
function windowTable(take) {
  const fmt = (value) => (value === null || value === undefined ? "–" : String(value));
  const head = el("tr", {}, el("th", {}, "window"), el("th", {}, "notes/s"), el("th", {}, "target"),
    el("th", {}, "voices"), el("th", {}, "target"));
  const rows = take.windows.map((w) => el("tr", {}, el("th", {}, w.window), el("td", {}, fmt(w.notes_per_second)),
    el("td", { className: "target" }, fmt(w.target_notes_per_second)), el("td", {}, fmt(w.voices)),
    el("td", { className: "target" }, fmt(w.target_voices))));
  return el("details", { className: "windows" }, el("summary", {}, `In windows; texture: ${take.texture || "off"}`),
    el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

async function loadTakes() {
  const { takes } = await api("/api/takes");
  const list = $("takes");
  for (const take of takes) {  // oldest first, each new one on top
    if (state.shown.has(take.name)) continue;
    state.shown.add(take.name);
    list.prepend(takeCard(take));
  }
  $("no-takes").hidden = takes.length > 0;
}

// The page's panels: the takes (a primer continued), the duet and teaching; one shows at a time.
function showPanel(name) {
  document.body.dataset.tab = name;
  for (const tab of document.querySelectorAll("#tabs button")) tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
  if (name === "duet") StudioPiano.load();
}

async function main() {
  state.config = await api("/api/config");
  $("checkpoint").textContent = `model: ${state.config.checkpoint} · audio: ${state.config.audio_format}`;
  for (const [name, colour] of Object.entries(state.config.colours || {})) {
    document.documentElement.style.setProperty("--" + name, colour);
  }
  $("example-choice").hidden = !state.config.example;
  buildSettings();
  for (const radio of document.querySelectorAll("input[name=primer-source]")) radio.addEventListener("change", onPrimerSource);
  $("primer-file").addEventListener("change", () => {
    if ($("primer-file").files.length) uploadPrimer($("primer-file").files[0]);
  });
  $("primer-seconds").addEventListener("change", showPrimer);
  $("generate").addEventListener("click", generate);
  for (const tab of document.querySelectorAll("#tabs button")) tab.addEventListener("click", () => showPanel(tab.dataset.tab));
  Duet.init(state.config);
  document.addEventListener("studio:take", () => loadTakes());
  document.addEventListener("studio:models", (event) => showModels(event.detail));
  document.addEventListener("studio:use-model", (event) => {
    $("model").value = event.detail;
    showPanel("takes");
    $("settings-panel").scrollIntoView({ behavior: "smooth" });
  });
  await Teach.init();
  $("stop").addEventListener("click", stop);
  await showPrimer();
  await loadTakes();
  document.body.dataset.ready = "1";
}

showPanel("takes");
main().catch((error) => showError("generate-error", error.message));
