"use strict";
/* lenet drawing page: draw (or drop a photo) -> POST /api/predict -> top guess and bars.
   Plain JS, no dependencies, no build step; main() at the bottom wires everything. */

// Stroke width as a fraction of the canvas side. A digit drawn about 65% of the canvas
// tall is scaled to MNIST's 20-pixel box, which makes this a ~2.4-pixel stroke (measured
// by preprocess: MNIST's median is 2.5, and it leaves 1.7..4.6 alone).
const STROKE = 0.09;
const THROTTLE_MS = 90; // while drawing, ask for a prediction at most this often
const SEND_SIDE = 280; // the canvas is sent at this size, whatever the screen's pixel density
const UPLOAD_MAX_SIDE = 1600; // a photo over the size limit is scaled to this and re-encoded
const ACCEPTED = ["image/png", "image/jpeg", "image/bmp", "image/webp"];
const IDS = ["draw-title", "canvas", "pad", "drop-hint", "clear", "upload", "file", "model-picker", "model",
  "draw-hint", "top", "mini", "confidence", "seen", "seen-empty", "bars", "status"];

const el = {}; // the page's elements by id
const state = {
  models: [], // from GET /api/models
  digits: true, // the selected model reads digits (else Fashion-MNIST-like classes)
  model: null, // the selected model's name
  maxBytes: 5 * 1024 * 1024,
  ctx: null,
  pointer: null, // id of the pointer that is drawing; others (a second finger) are ignored
  last: null, // last point of the stroke, in canvas pixels
  inked: false, // something to predict is on the canvas
  upload: null, // a photo's bytes to send instead of the canvas, until the next stroke
  timer: 0,
  busy: false, // one request at a time, so answers arrive in order
  again: false, // the picture changed while a request was out
  generation: 0, // bumped by Clear and by uploads: late answers for older pictures are dropped
};

/* ---------- drawing ---------- */

function setupCanvas() {
  // Back the canvas with device pixels so strokes stay sharp on a phone.
  const side = Math.round(Math.min(1024, el.canvas.clientWidth * (window.devicePixelRatio || 1)));
  el.canvas.width = el.canvas.height = side || 280;
  state.ctx = el.canvas.getContext("2d");
  paintPaper();
}

function paintPaper() {
  // Black ink on white paper: preprocessing detects the polarity and inverts to MNIST's.
  state.ctx.fillStyle = "#fff";
  state.ctx.fillRect(0, 0, el.canvas.width, el.canvas.height);
}

function canvasPoint(event) {
  const box = el.canvas.getBoundingClientRect();
  const scale = el.canvas.width / el.canvas.clientWidth;
  return {
    x: (event.clientX - box.left - el.canvas.clientLeft) * scale,
    y: (event.clientY - box.top - el.canvas.clientTop) * scale,
  };
}

function inkLine(from, to) {
  const ctx = state.ctx;
  ctx.strokeStyle = "#000";
  ctx.lineWidth = el.canvas.width * STROKE;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x, to.y);
  ctx.stroke();
}

function onPointerDown(event) {
  if (state.pointer !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
  event.preventDefault();
  el.canvas.setPointerCapture(event.pointerId);
  state.pointer = event.pointerId;
  state.upload = null; // drawing over a photo: from now on the canvas is what we send
  state.last = canvasPoint(event);
  inkLine(state.last, state.last); // a tap leaves a dot
  state.inked = true;
  predictSoon();
}

function onPointerMove(event) {
  if (event.pointerId !== state.pointer) return;
  // Coalesced events keep fast strokes smooth where the browser batches pointer moves.
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of events.length ? events : [event]) {
    const point = canvasPoint(e);
    inkLine(state.last, point);
    state.last = point;
  }
  predictSoon();
}

function onPointerUp(event) {
  if (event.pointerId !== state.pointer) return;
  state.pointer = null;
  predictNow();
}

function clearAll() {
  state.generation += 1;
  state.inked = false;
  state.upload = null;
  clearTimeout(state.timer);
  state.timer = 0;
  paintPaper();
  showIdle();
}

/* ---------- photos: file picker and drag-and-drop ---------- */

async function useFile(file) {
  if (!file) return;
  if (!ACCEPTED.includes(file.type)) {
    showError(`${file.name}: not a PNG, JPEG, BMP or WebP image`);
    return;
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file); // applies the photo's EXIF orientation
  } catch {
    showError(`${file.name}: this image cannot be read`);
    return;
  }
  state.generation += 1;
  drawPhoto(bitmap);
  state.inked = true;
  // The original bytes go to the server; only a photo over the limit is shrunk first.
  state.upload = file.size <= state.maxBytes ? file : await shrink(bitmap);
  bitmap.close();
  el.status.classList.remove("error");
  el.status.textContent = `Photo: ${file.name}`;
  predictNow();
}

function drawPhoto(bitmap) {
  // Shown on the canvas so the user sees what is being recognised, and can draw over it.
  const side = el.canvas.width;
  const scale = Math.min(side / bitmap.width, side / bitmap.height);
  const w = bitmap.width * scale;
  const h = bitmap.height * scale;
  paintPaper();
  state.ctx.drawImage(bitmap, (side - w) / 2, (side - h) / 2, w, h);
}

function shrink(bitmap) {
  const scale = Math.min(1, UPLOAD_MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
}

function setupDrop() {
  // The whole page takes a drop, so a near miss does not open the file in the tab.
  let depth = 0; // dragenter/dragleave fire for every child element crossed
  const show = (on) => { el["drop-hint"].hidden = !on; };
  document.addEventListener("dragenter", (e) => { e.preventDefault(); depth += 1; show(true); });
  document.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) show(false); });
  document.addEventListener("dragover", (e) => { e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    show(false);
    useFile(e.dataTransfer && e.dataTransfer.files[0]);
  });
}

/* ---------- talking to the server ---------- */

function predictSoon() {
  if (!state.timer) state.timer = setTimeout(() => predictNow(), THROTTLE_MS);
}

async function predictNow() {
  clearTimeout(state.timer);
  state.timer = 0;
  if (state.busy) {
    state.again = true;
    return;
  }
  if (!state.inked) return;
  state.busy = true;
  const generation = state.generation;
  try {
    const body = state.upload || (await canvasBlob());
    const result = await postImage(body);
    if (generation === state.generation) showResult(result);
  } catch (error) {
    if (generation === state.generation) showError(error.message);
  } finally {
    state.busy = false;
    if (state.again) {
      state.again = false;
      predictNow();
    }
  }
}

function canvasBlob() {
  // A 280-pixel copy: plenty for a 28x28 input, and the server's work per request does
  // not grow with the phone's pixel density.
  const copy = document.createElement("canvas");
  copy.width = copy.height = SEND_SIDE;
  const ctx = copy.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(el.canvas, 0, 0, SEND_SIDE, SEND_SIDE);
  return new Promise((resolve) => copy.toBlob(resolve, "image/png"));
}

async function postImage(blob) {
  const params = new URLSearchParams({ include_input: "true", top_k: "2" });
  if (state.model) params.set("model", state.model);
  const response = await fetch(`/api/predict?${params}`, {
    method: "POST",
    headers: { "Content-Type": blob.type || "application/octet-stream" },
    body: blob,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
  return data;
}

async function loadModels() {
  const response = await fetch("/api/models");
  if (!response.ok) throw new Error(`cannot list the models (${response.status})`);
  const data = await response.json();
  state.models = data.models;
  state.maxBytes = data.max_body_bytes || state.maxBytes;
  if (state.models.length > 1) {
    for (const m of state.models) {
      const parts = [m.name];
      if (m.dataset !== m.name) parts.push(m.dataset);
      if (m.test_accuracy != null) parts.push(`${(m.test_accuracy * 100).toFixed(1)}% test`);
      el.model.add(new Option(parts.join(" · "), m.name));
    }
    el["model-picker"].hidden = false;
  }
  selectModel(data.default);
}

function selectModel(name) {
  state.model = name;
  el.model.value = name;
  const model = state.models.find((m) => m.name === name);
  buildBars(model ? model.class_names : []);
  state.digits = !model || model.class_names.every((name, i) => name === String(i));
  el["draw-title"].textContent = state.digits ? "Draw one digit" : "Draw or upload an item";
  el["draw-hint"].textContent = state.digits
    ? "Draw large, in the middle. Or drop a photo of a handwritten digit on the square."
    : "Draw the outline of a garment or a shoe, or drop a photo of one on the square.";
  if (state.inked) predictNow();
  else showIdle();
}

/* ---------- showing results ---------- */

function buildBars(names) {
  el.bars.replaceChildren(...names.map((name) => {
    const item = document.createElement("li");
    item.innerHTML = '<span class="label"></span><span class="track" aria-hidden="true">'
      + '<span class="fill"></span></span><span class="pct"></span>';
    item.querySelector(".label").textContent = name;
    item.querySelector(".label").title = name;
    return item;
  }));
}

function percent(p) {
  if (p > 0 && p < 0.005) return "<1%";
  return `${Math.round(p * 100)}%`;
}

function setBars(probabilities, best) {
  [...el.bars.children].forEach((item, i) => {
    const p = probabilities ? probabilities[i] : 0;
    item.querySelector(".fill").style.width = `${(p * 100).toFixed(1)}%`;
    item.querySelector(".pct").textContent = probabilities ? percent(p) : "";
    item.classList.toggle("best", i === best);
  });
}

function setTop(text, kind, confidence) {
  el.top.textContent = text;
  el.top.className = `top ${kind}`;
  // The phone layout's copy of the guess, next to the buttons under the canvas.
  el.mini.textContent = confidence == null ? "" : `${text} · ${percent(confidence)}`;
}

function setSeen(dataUrl) {
  el.seen.hidden = !dataUrl;
  el["seen-empty"].hidden = Boolean(dataUrl);
  if (dataUrl) el.seen.src = dataUrl;
}

function showIdle() {
  setTop("?", "none");
  el.confidence.textContent = state.digits ? "Draw a digit to start" : "Draw or upload to start";
  setBars(null, -1);
  setSeen(null);
  el.status.textContent = "";
  el.status.classList.remove("error");
}

function showResult(result) {
  if (result.prediction === null) {
    setTop("?", "none");
    el.confidence.textContent = result.name ? `${result.name[0].toUpperCase()}${result.name.slice(1)}` : "Nothing found";
    setBars(null, -1);
  } else {
    setTop(result.name, result.name.length > 2 ? "long" : "", result.confidence);
    const runnerUp = result.top_k && result.top_k[1];
    const next = runnerUp ? ` · then ${runnerUp.name ?? ""} (${percent(runnerUp.probability ?? 0)})` : "";
    el.confidence.textContent = `${percent(result.confidence)} sure${next}`;
    setBars(result.probabilities, result.prediction);
  }
  setSeen(result.input_png);
  if (!state.upload) el.status.textContent = "";
  el.status.classList.remove("error");
}

function showError(message) {
  el.status.textContent = message;
  el.status.classList.add("error");
}

/* ---------- wiring ---------- */

function main() {
  for (const id of IDS) el[id] = document.getElementById(id);
  setupCanvas();
  el.canvas.addEventListener("pointerdown", onPointerDown);
  el.canvas.addEventListener("pointermove", onPointerMove);
  el.canvas.addEventListener("pointerup", onPointerUp);
  el.canvas.addEventListener("pointercancel", onPointerUp);
  el.canvas.addEventListener("contextmenu", (e) => e.preventDefault()); // long press on a phone
  el.canvas.addEventListener("keydown", (e) => {
    if (["Delete", "Backspace", "Escape"].includes(e.key)) {
      e.preventDefault();
      clearAll();
    }
  });
  el.clear.addEventListener("click", clearAll);
  el.upload.addEventListener("click", () => el.file.click());
  el.file.addEventListener("change", () => {
    useFile(el.file.files[0]);
    el.file.value = ""; // choosing the same file again still fires "change"
  });
  el.model.addEventListener("change", () => selectModel(el.model.value));
  setupDrop();
  showIdle();
  loadModels().catch((error) => showError(error.message));
}

main();
