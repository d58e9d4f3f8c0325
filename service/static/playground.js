"use strict";
// The playground: the service's own HTTP API from a browser, with nothing to build.
// Every job (generate, variations, text diff, interpolation, edit) becomes a card that follows
// GET /jobs/{id}/events?previews=1 (read with fetch: an EventSource cannot send the API key)
// and ends as a grid of results, each with buttons that start the next job from it.

const $ = (selector, root = document) => root.querySelector(selector);
const KEY_STORAGE = "unclip.apiKey";
const FINAL = new Set(["succeeded", "failed", "canceled"]);
const RECONNECTS = 5;
const state = { pickA: null, editSide: 0, painting: false };

// -- talking to the API ------------------------------------------------------------------------

function authHeaders(extra = {}) {
  const key = $("#api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

async function apiError(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function post(path, body) {
  const options = { method: "POST", headers: authHeaders() };
  if (body instanceof FormData) {
    options.body = body;
  } else {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, options);
  if (!response.ok) throw new Error(await apiError(response));
  return response.json();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function parseEvent(block) {
  const event = { event: "message", id: null, data: null };
  const data = [];
  for (const line of block.split(/\r\n|\r|\n/)) {
    if (!line || line.startsWith(":")) continue; // blank, or a keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event.event = value;
    else if (field === "id") event.id = value;
    else if (field === "data") data.push(value);
  }
  if (data.length) event.data = data.join("\n");
  return event;
}

// Server-Sent Events over fetch; reconnects with Last-Event-ID when the stream breaks early.
async function* serverEvents(path) {
  let lastId = null;
  for (let attempt = 0; attempt < RECONNECTS; attempt += 1) {
    let response;
    try {
      response = await fetch(path, { headers: authHeaders(lastId ? { "Last-Event-ID": lastId } : {}) });
    } catch {
      await sleep(1000);
      continue;
    }
    if (response.status === 204) return; // the stream already ended
    if (!response.ok) throw new Error(await apiError(response));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let blank;
        while ((blank = /\r\n\r\n|\n\n|\r\r/.exec(buffer)) !== null) {
          const event = parseEvent(buffer.slice(0, blank.index));
          buffer = buffer.slice(blank.index + blank[0].length);
          if (event.id !== null) lastId = event.id;
          if (event.data !== null) {
            attempt = 0;
            yield event;
          }
        }
      }
    } catch {
      // the connection broke: reconnect below
    }
    await sleep(1000);
  }
  throw new Error("lost the job's event stream");
}

// -- job cards ---------------------------------------------------------------------------------

function say(text) {
  $("#message").textContent = text || "";
}

async function start(path, body, kind, title) {
  say("");
  let job;
  try {
    job = await post(path, body);
  } catch (error) {
    say(error.message);
    return null;
  }
  const card = $("#job-template").content.firstElementChild.cloneNode(true);
  card.dataset.job = job.id;
  $(".kind", card).textContent = kind;
  $(".title", card).textContent = title;
  $(".title", card).title = title;
  $(".cancel", card).addEventListener("click", () => cancel(job.id));
  $("#results").prepend(card);
  follow(job, card);
  return card;
}

async function cancel(jobId) {
  const response = await fetch(`/jobs/${jobId}`, { method: "DELETE", headers: authHeaders() });
  if (!response.ok && response.status !== 409) say(await apiError(response));
}

async function follow(job, card) {
  showStatus(card, job);
  try {
    for await (const event of serverEvents(`/jobs/${job.id}/events?previews=1`)) {
      const data = JSON.parse(event.data);
      if (event.event === "progress") showProgress(card, data);
      else if (event.event === "preview") showPreview(card, data);
      else showStatus(card, data);
      if (FINAL.has(event.event)) {
        showResult(card, data);
        return;
      }
    }
  } catch (error) {
    showStatus(card, { status: "failed", error: { message: error.message } });
  }
}

function showStatus(card, record) {
  card.dataset.status = record.status;
  let text = record.status;
  if (record.status === "queued" && record.queue_position) text = `queued, #${record.queue_position}`;
  if (record.status === "failed" && record.error) text = `failed: ${record.error.message}`;
  $(".status", card).textContent = text;
}

function showProgress(card, progress) {
  const bars = $(".bars", card);
  let label = bars.querySelector(`[data-stage="${progress.stage}"]`);
  if (!label) {
    for (const done of bars.querySelectorAll("[data-stage] progress")) done.value = done.max;
    label = document.createElement("label");
    label.dataset.stage = progress.stage;
    label.append(Object.assign(document.createElement("span"), { textContent: progress.stage }));
    label.append(document.createElement("progress"));
    bars.append(label);
  }
  const bar = $("progress", label);
  bar.max = progress.total;
  bar.value = progress.step;
  $(".overall", card).value = progress.fraction;
}

function showPreview(card, preview) {
  const image = $(".preview", card);
  image.src = preview.image;
  image.hidden = false;
}

function showResult(card, record) {
  if (record.status !== "succeeded") return;
  $(".overall", card).value = 1;
  const grid = $(".grid", card);
  for (const link of record.images) grid.append(figure(record, link.url));
  if (record.animation) {
    const a = Object.assign(document.createElement("a"), {
      href: record.animation,
      textContent: "animation",
      className: "animation",
      target: "_blank",
    });
    $("header", card).insertBefore(a, $(".status", card));
  }
}

function figure(record, url) {
  const item = $("#figure-template").content.firstElementChild.cloneNode(true);
  const image = $("img", item);
  image.src = url;
  image.alt = record.params.prompt || record.kind;
  const size = record.params.size;
  $(".variations", item).addEventListener("click", () => variations(url, size));
  $(".text-diff", item).addEventListener("click", () => textDiff(url, size, record.params.prompt || ""));
  $(".interpolate", item).addEventListener("click", () => pickA(item, url, size));
  $(".use-as-b", item).addEventListener("click", () => interpolate({ image: url }));
  $(".to-edit", item).addEventListener("click", () => editFrom(url));
  return item;
}

// -- what a result can start -------------------------------------------------------------------

async function imageBlob(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(await apiError(response));
  return response.blob();
}

function count(selector, fallback) {
  const value = Number.parseInt($(selector).value, 10);
  return Number.isFinite(value) ? value : fallback;
}

async function variations(url, size) {
  const form = new FormData();
  try {
    form.append("image", await imageBlob(url), "image.png");
  } catch (error) {
    say(error.message);
    return;
  }
  form.append("n", String(count("#n", 2)));
  form.append("size", size);
  await start("/variations", form, "variations", "of a result");
}

function textDiff(url, size, prompt) {
  const dialog = $("#diff-dialog");
  $("#diff-base").value = prompt;
  $("#diff-target").value = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "go") return;
    const form = new FormData();
    try {
      form.append("image", await imageBlob(url), "image.png");
    } catch (error) {
      say(error.message);
      return;
    }
    form.append("base", $("#diff-base").value);
    form.append("target", $("#diff-target").value);
    form.append("size", size);
    await start("/text-diffs", form, "text diff", `${$("#diff-base").value} → ${$("#diff-target").value}`);
  };
  dialog.showModal();
}

function pickA(item, url, size) {
  for (const marked of document.querySelectorAll("figure.marked")) marked.classList.remove("marked");
  item.classList.add("marked");
  state.pickA = { url, size };
  document.body.classList.add("picking");
  $("#pick").hidden = false;
  $("#pick-prompt").focus();
}

function endPick() {
  for (const marked of document.querySelectorAll("figure.marked")) marked.classList.remove("marked");
  state.pickA = null;
  document.body.classList.remove("picking");
  $("#pick").hidden = true;
}

async function interpolate(endB) {
  const a = state.pickA;
  if (!a) return;
  endPick();
  const form = new FormData();
  try {
    form.append("image_a", await imageBlob(a.url), "a.png");
    if (endB.image) form.append("image_b", await imageBlob(endB.image), "b.png");
  } catch (error) {
    say(error.message);
    return;
  }
  if (endB.prompt) form.append("prompt_b", endB.prompt);
  form.append("steps", "5");
  form.append("size", a.size);
  await start("/interpolations", form, "interpolation", endB.prompt ? `to “${endB.prompt}”` : "between two results");
}

// -- edit mode: paint a mask on an image -------------------------------------------------------

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
  for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
}

async function loadEditImage(blob) {
  const bitmap = await createImageBitmap(blob);
  const side = Math.min(bitmap.width, bitmap.height, 1024);
  const crop = Math.min(bitmap.width, bitmap.height);
  for (const canvas of [$("#edit-image"), $("#edit-mask")]) {
    canvas.width = side;
    canvas.height = side;
  }
  const left = (bitmap.width - crop) / 2;
  const top = (bitmap.height - crop) / 2;
  $("#edit-image").getContext("2d").drawImage(bitmap, left, top, crop, crop, 0, 0, side, side);
  state.editSide = side;
}

async function editFrom(url) {
  try {
    await loadEditImage(await imageBlob(url));
  } catch (error) {
    say(error.message);
    return;
  }
  showTab("edit");
  $("#edit-prompt").focus();
}

function paint(event) {
  if (!state.painting || !state.editSide) return;
  const canvas = $("#edit-mask");
  const box = canvas.getBoundingClientRect();
  const scale = canvas.width / box.width;
  const context = canvas.getContext("2d");
  context.fillStyle = "rgba(255, 64, 64, 0.6)";
  context.beginPath();
  const radius = (Number($("#brush").value) / 2) * scale;
  context.arc((event.clientX - box.left) * scale, (event.clientY - box.top) * scale, radius, 0, 2 * Math.PI);
  context.fill();
}

const canvasBlob = (canvas) => new Promise((resolve) => canvas.toBlob(resolve, "image/png"));

// OpenAI's convention, the service's too: transparent pixels of the mask are the ones to redraw.
async function maskBlob() {
  const painted = $("#edit-mask").getContext("2d").getImageData(0, 0, state.editSide, state.editSide);
  const mask = document.createElement("canvas");
  mask.width = state.editSide;
  mask.height = state.editSide;
  const context = mask.getContext("2d");
  const pixels = context.createImageData(state.editSide, state.editSide);
  let marked = 0;
  for (let i = 3; i < pixels.data.length; i += 4) {
    const edit = painted.data[i] > 0;
    pixels.data[i] = edit ? 0 : 255;
    marked += edit ? 1 : 0;
  }
  context.putImageData(pixels, 0, 0);
  return marked ? canvasBlob(mask) : null;
}

async function submitEdit(event) {
  event.preventDefault();
  if (!state.editSide) return say("choose an image first");
  const prompt = $("#edit-prompt").value.trim();
  if (!prompt) return say("describe what to draw");
  const mask = await maskBlob();
  if (!mask) return say("paint over the part of the image to redraw");
  const form = new FormData();
  form.append("image", await canvasBlob($("#edit-image")), "image.png");
  form.append("mask", mask, "mask.png");
  form.append("prompt", prompt);
  form.append("n", String(count("#n", 2)));
  form.append("size", $("#size").value);
  await start("/edits", form, "edit", prompt);
}

// -- the generate form -------------------------------------------------------------------------

function overrides(kind, stages) {
  const chosen = {};
  for (const stage of stages) {
    const value = $(`#${kind}-${stage}`).value;
    if (value !== "") chosen[stage] = kind === "steps" ? Number.parseInt(value, 10) : Number(value);
  }
  return Object.keys(chosen).length ? chosen : null;
}

async function submitGenerate(event) {
  event.preventDefault();
  const prompt = $("#prompt").value.trim();
  if (!prompt) return say("type a prompt");
  const body = { prompt, n: count("#n", 1), size: $("#size").value };
  if ($("#seed").value !== "") body.seed = Number.parseInt($("#seed").value, 10);
  const steps = overrides("steps", ["prior", "decoder", "sr256", "sr1024"]);
  const guidance = overrides("guidance", ["prior", "decoder"]);
  if (steps) body.steps = steps;
  if (guidance) body.guidance = guidance;
  await start("/generate", body, "generate", prompt);
}

function init() {
  const key = $("#api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("input", () => localStorage.setItem(KEY_STORAGE, key.value.trim()));
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  $("#generate-form").addEventListener("submit", submitGenerate);
  $("#edit-form").addEventListener("submit", submitEdit);
  $("#edit-file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) loadEditImage(file).catch((error) => say(`cannot read that image: ${error.message}`));
  });
  const mask = $("#edit-mask");
  mask.addEventListener("pointerdown", (event) => {
    state.painting = true;
    mask.setPointerCapture(event.pointerId);
    paint(event);
  });
  mask.addEventListener("pointermove", paint);
  mask.addEventListener("pointerup", () => (state.painting = false));
  $("#clear-mask").addEventListener("click", () => {
    const canvas = $("#edit-mask");
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  });
  $("#pick-go").addEventListener("click", () => {
    const prompt = $("#pick-prompt").value.trim();
    if (prompt) interpolate({ prompt });
  });
  $("#pick-cancel").addEventListener("click", endPick);
}

init();
