// "Teach it your music": drop MIDI files (or a zip) into a set, fine-tune the studio's model on
// it in the studio's queue, follow the steps and the validation loss, stop at any time, and find
// the new model in the list (and in the generate form). A reload finds a running job again.
// `api` and `el` are studio.js's (called once the page has loaded every script).
"use strict";

const Teach = (() => {
  const $ = (id) => document.getElementById(id);
  const state = { set: null, files: 0, job: null, timer: null, uploading: 0 };
  const SVG = "http://www.w3.org/2000/svg";

  const postJson = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

  function showError(message) { const e = $("teach-error"); e.textContent = message || ""; e.hidden = !message; }

  // ----- the set of files -----
  async function addFiles(files) {
    showError("");
    if (state.job) return showError("a model is being taught: wait for it, or stop it, before starting a new set");
    state.uploading += 1;
    updateButtons();
    try {
      if (!state.set) state.set = (await postJson("/api/teach/sets", {})).set;
      const skipped = [];
      for (const file of files) {
        try {
          const answer = await api(`/api/teach/sets/${state.set}/files`, {
            method: "POST", body: file,
            headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
          });
          showSet(answer);
          for (const [name, reason] of answer.skipped) skipped.push(`${file.name}: ${name}: ${reason}`);
        } catch (error) {
          skipped.push(error.message);
        }
      }
      const list = $("teach-skipped");
      list.replaceChildren(...skipped.map((line) => el("li", {}, "skipped " + line)));
      list.hidden = skipped.length === 0;
    } catch (error) {
      showError(error.message);
    } finally {
      state.uploading -= 1;
      updateButtons();
    }
  }

  function showSet(set) {
    state.files = set.files.length;
    const shown = set.files.slice(0, 8).join(", ") + (set.files.length > 8 ? `, and ${set.files.length - 8} more` : "");
    $("teach-set").textContent = set.files.length
      ? `${set.files.length} file(s), ${(set.bytes / 1024).toFixed(0)} KB: ${shown}` : "No files yet.";
  }

  function updateButtons() {
    $("teach-start").disabled = Boolean(state.job) || state.uploading > 0 || state.files === 0;
    $("teach-stop").disabled = !state.job;
  }

  // ----- a fine-tuning job -----
  async function start() {
    showError("");
    try {
      const status = await postJson("/api/teach", { set: state.set, minutes: $("teach-minutes").value.trim(), name: $("teach-name").value });
      state.set = null;  // the set is taught now: new files start a new one
      state.files = 0;
      $("teach-set").textContent = "No files yet.";
      follow(status);
    } catch (error) {
      showError(error.message);
    }
  }

  async function trainOn(model) {
    showError("");
    if (state.job) return showError("a model is being taught: wait for it, or stop it, first");
    try {
      follow(await postJson("/api/teach/train-on", { model, minutes: $("teach-minutes").value.trim() }));
      await refreshModels();
    } catch (error) {
      showError(error.message);
    }
  }

  async function stop() {
    if (!state.job) return;
    try { await postJson(`/api/jobs/${state.job}/stop`, {}); } catch (error) { showError(error.message); }
  }

  function follow(status) {
    state.job = status.job;
    $("teach-job").hidden = false;
    updateButtons();
    show(status);
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, 1000);
  }

  async function poll() {
    const job = state.job;
    if (!job) return;
    let status;
    try {
      status = await api(`/api/jobs/${job}`);
    } catch (error) {  // (a restarted studio forgot the job: the list says what became of it)
      state.job = null;
      updateButtons();
      await refreshModels();
      return;
    }
    if (job !== state.job) return;
    show(status);
    if (["done", "failed", "cancelled"].includes(status.state)) {
      state.job = null;
      updateButtons();
      await refreshModels();
      return;
    }
    state.timer = setTimeout(poll, 1000);
  }

  function show(status) {
    const minutes = (s) => (s / 60).toFixed(1);
    let text;
    if (status.state === "queued") text = `"${status.name}": waiting in the queue (${status.position} ahead)`;
    else if (status.state === "running") {
      text = `"${status.name}": ${status.phase}` + (status.step ? ` · step ${status.step} · ${minutes(status.seconds)} of ${status.minutes} min` : "") +
        (status.best_val_nats !== null ? ` · best validation ${status.best_val_nats.toFixed(3)} nats/token` : "") +
        (status.stopping ? " · stopping" : "");
    } else if (status.state === "done") text = `"${status.name}": done after ${status.step} steps: it is in the list below`;
    else if (status.state === "failed") text = `"${status.name}" failed`;
    else text = `"${status.name}": ${status.state}`;
    $("teach-status").textContent = text;
    $("teach-status").dataset.state = status.state;
    $("teach-progress").value = status.state === "done" ? 1 : status.fraction;
    if (status.state === "failed") showError(status.error);
    plot(status.curve);
  }

  // The validation loss (points joined, step 0 = before fine-tuning) over the training loss (grey).
  function plot(curve) {
    const svg = $("teach-plot");
    const points = curve ? curve.val.concat(curve.loss) : [];
    svg.hidden = !curve || curve.val.length + curve.loss.length < 2;
    if (svg.hidden) return;
    const W = 640, H = 200, left = 46, right = 12, top = 12, bottom = 28;
    const steps = points.map((p) => p[0]), values = points.map((p) => p[1]);
    const x0 = Math.min(...steps), x1 = Math.max(...steps, x0 + 1);
    const y0 = Math.min(...values), y1 = Math.max(...values, y0 + 1e-3);
    const x = (s) => left + (s - x0) / (x1 - x0) * (W - left - right);
    const y = (v) => top + (y1 - v) / (y1 - y0) * (H - top - bottom);
    const shape = (tag, attrs) => { const n = document.createElementNS(SVG, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); return n; };
    const text = (content, attrs) => { const n = shape("text", attrs); n.textContent = content; return n; };
    const line = (rows, cls) => shape("polyline", { class: cls, points: rows.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ") });
    svg.replaceChildren(
      shape("line", { class: "axis", x1: left, y1: H - bottom, x2: W - right, y2: H - bottom }),
      shape("line", { class: "axis", x1: left, y1: top, x2: left, y2: H - bottom }),
      text(y1.toFixed(2), { x: 4, y: top + 8 }), text(y0.toFixed(2), { x: 4, y: H - bottom }),
      text(`step ${x0}`, { x: left, y: H - 8 }), text(`step ${x1}`, { x: W - right - 60, y: H - 8 }),
      shape("line", { class: "val", x1: W - right - 250, y1: top + 6, x2: W - right - 232, y2: top + 6 }),
      text("validation", { x: W - right - 226, y: top + 10 }),
      shape("line", { class: "loss", x1: W - right - 160, y1: top + 6, x2: W - right - 142, y2: top + 6 }),
      text("training loss (nats/token)", { x: W - right - 136, y: top + 10 }),
      line(curve.loss, "loss"), line(curve.val, "val"),
      ...curve.val.map((p) => shape("circle", { class: "val-point", cx: x(p[0]), cy: y(p[1]), r: 3 })),
    );
  }

  // ----- the models -----
  function modelRow(model) {
    const row = el("div", { className: "model", id: "model-" + model.id });
    row.append(el("strong", {}, model.name), el("span", { className: "state muted" }, describe(model)));
    if (model.usable) {
      const use = el("button", { type: "button", className: "use-model" }, "Make takes with it");
      use.onclick = () => document.dispatchEvent(new CustomEvent("studio:use-model", { detail: model.id }));
      row.append(use);
    }
    if (model.can_train_on) {
      const more = el("button", { type: "button", className: "train-on", title: "go on training it for the time budget above" }, "Train on");
      more.onclick = () => trainOn(model.id);
      row.append(more);
    }
    if (model.note || model.error) row.append(el("p", { className: model.error ? "note error" : "note muted" }, model.error || model.note));
    return row;
  }

  function describe(model) {
    if (model.id === "default") return "the model the studio started with";
    const val = model.curve && model.curve.val.length ? model.curve.val : [];
    const before = val.length && val[0][0] === 0 ? val[0][1] : null;
    const best = model.best_val_nats;
    const loss = best !== null && best !== undefined
      ? ` · validation ${before !== null ? before.toFixed(3) + " → " : ""}${best.toFixed(3)} nats/token` : "";
    const ended = model.ended_by ? ` (ended by ${model.ended_by})` : "";
    return `${model.state}${ended} · ${model.files} file(s) · ${model.step || 0} steps of a ${model.minutes}-minute budget${loss} · ${model.created}`;
  }

  async function refreshModels() {
    const answer = await api("/api/models");
    $("models").replaceChildren(...answer.models.map(modelRow));
    const notes = answer.restart_notes || [];
    $("restart-notes").textContent = notes.length ? "When the studio started: " + notes.join("; ") : "";
    $("restart-notes").hidden = notes.length === 0;
    document.dispatchEvent(new CustomEvent("studio:models", { detail: answer.models }));
    return answer;
  }

  async function init() {
    const drop = $("teach-drop");
    drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      addFiles([...event.dataTransfer.files]);
    });
    $("teach-files").addEventListener("change", () => { addFiles([...$("teach-files").files]); $("teach-files").value = ""; });
    $("teach-start").addEventListener("click", start);
    $("teach-stop").addEventListener("click", stop);
    const answer = await refreshModels();
    if (answer.teaching) follow(answer.teaching);  // a reload while a model is being taught
  }

  return { init, refreshModels, addFiles };
})();
