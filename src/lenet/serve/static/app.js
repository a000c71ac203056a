"use strict";
/* lenet drawing page: draw (or drop a photo) -> POST /api/predict -> top guess and bars,
   or with "Several digits" POST /api/predict?number=true -> the number and each digit's box;
   while "Inside the network" is open, POST /api/explain instead: the same answer, plus each
   layer's feature maps (PNG sprites), kernels and an attribution overlay.
   Plain JS, no dependencies, no build step; main() at the bottom wires everything. */

// Pen width as a fraction of the canvas side, so it is the same pen on a phone and a desktop
// whatever the pixel density. A digit drawn 65% of the canvas tall is scaled to MNIST's
// 20-pixel box, which makes this a ~1.8-pixel stroke (preprocess brings strokes into MNIST's
// 1.7..4.6); a digit drawn 15% tall, as in a number, gets ~8 px instead of a blob (at 0.09,
// three digits that small were read "788" instead of "735").
const STROKE = 0.06;
const TINY = 0.25; // ink whose long side is under this share of the canvas: "draw bigger"
const TINY_NUMBER = 0.15; // several digits: the tallest under this share of the canvas
const THROTTLE_MS = 90; // while drawing, ask for a prediction at most this often
const SEND_SIDE = 280; // the canvas is sent at this size, whatever the screen's pixel density
const UPLOAD_MAX_SIDE = 1600; // a photo over the size limit is scaled to this and re-encoded
const ACCEPTED = ["image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp"]; // GIF: its first frame
const IDS = ["draw-title", "canvas", "pad", "boxes", "drop-hint", "clear", "upload", "file", "model-picker", "model",
  "several", "advice", "draw-hint", "top", "mini", "confidence", "verdict", "seen-figure", "seen", "seen-empty",
  "seen-caption", "subtitle", "bars", "digits", "status", "result", "inside", "inside-input", "inside-attr",
  "attr-toggle", "steps-toggle", "inside-note", "steps", "layers", "map-info"];
const WIDE = "(min-width: 760px)"; // the panel starts open on wider screens, collapsed on phones
// Where the image sent lies on the canvas: canvas share = x0 + image pixel * sx (boxes, "draw bigger").
const DRAWN = { photo: false, x0: 0, y0: 0, sx: 1 / SEND_SIDE, sy: 1 / SEND_SIDE };
// A status's look: the class of the guess, its digit boxes and its badge.
const LOOK = { ok: "", unsure: "unsure", not_a_digit: "reject", no_digit: "none" };

const el = {}; // the page's elements by id
const state = {
  models: [], // from GET /api/models
  digits: true, // the selected model reads digits (its mode from GET /api/models; else Fashion-MNIST-like items)
  classNames: [], // the selected model's
  number: false, // "Several digits": read a whole number (digit models only)
  model: null, // the selected model's name
  maxBytes: 5 * 1024 * 1024,
  ctx: null,
  pointer: null, // id of the pointer that is drawing; others (a second finger) are ignored
  last: null, // last point of the stroke, in canvas pixels
  inked: false, // something to predict is on the canvas
  upload: null, // a photo's bytes to send instead of the canvas, until the next stroke
  frame: DRAWN, // where the image sent lies on the canvas
  timer: 0,
  busy: false, // one request at a time, so answers arrive in order
  again: false, // the picture changed while a request was out
  generation: 0, // bumped by Clear and by uploads: late answers for older pictures are dropped
  layers: [], // the last explain answer's layers ("Inside the network")
  layout: "", // their names and shapes: the map canvases are rebuilt only when this changes
  steps: false, // "Preprocessing steps" is on: explain requests ask for them
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
  if (from.x === to.x && from.y === to.y) {
    // A tap: canvas drops a zero-length line (round cap or not), so draw the pen's disc.
    ctx.fillStyle = "#000";
    ctx.arc(from.x, from.y, ctx.lineWidth / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
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
  state.frame = DRAWN;
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
  state.frame = DRAWN;
  clearTimeout(state.timer);
  state.timer = 0;
  state.again = false; // an answer still on its way is dropped (generation)
  markBusy();
  paintPaper();
  showIdle();
}

/* ---------- photos: file picker and drag-and-drop ---------- */

async function useFile(file) {
  if (!file) return;
  if (!ACCEPTED.includes(file.type)) {
    showError(`${file.name}: not a PNG, JPEG, BMP, GIF or WebP image`);
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
  if (file.size <= state.maxBytes) {
    state.upload = file;
  } else {
    state.upload = await shrink(bitmap);
    const scale = shrinkScale(bitmap); // the boxes come back in the shrunk photo's pixels
    state.frame = { ...state.frame, sx: state.frame.sx / scale, sy: state.frame.sy / scale };
  }
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
  state.frame = { photo: true, x0: (side - w) / 2 / side, y0: (side - h) / 2 / side,
    sx: scale / side, sy: scale / side };
}

function shrinkScale(bitmap) {
  return Math.min(1, UPLOAD_MAX_SIDE / Math.max(bitmap.width, bitmap.height));
}

function shrink(bitmap) {
  const scale = shrinkScale(bitmap);
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

function markBusy() {
  // aria-busy on the result panel while an answer is due (a request out or about to go).
  el.result.setAttribute("aria-busy", String(state.busy || state.again || Boolean(state.timer)));
}

function predictSoon() {
  if (!state.timer) state.timer = setTimeout(() => predictNow(), THROTTLE_MS);
  markBusy();
}

async function predictNow() {
  clearTimeout(state.timer);
  state.timer = 0;
  if (state.busy) {
    state.again = true;
    return;
  }
  if (!state.inked) {
    markBusy();
    return;
  }
  state.busy = true;
  markBusy();
  const generation = state.generation;
  const frame = state.frame; // the answer's boxes are in this picture's pixels
  try {
    const body = state.upload || (await canvasBlob());
    const result = await postImage(body);
    if (generation === state.generation) showResult(result, frame);
  } catch (error) {
    if (generation === state.generation) showError(error.message);
  } finally {
    state.busy = false;
    if (state.again) {
      state.again = false;
      predictNow();
    }
    markBusy();
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
  if (state.number) params.set("number", "true");
  const inside = explaining();
  if (inside) {
    params.delete("include_input"); // explain always sends the input
    if (state.steps) params.set("steps", "true");
  }
  const response = await fetch(`/api/${inside ? "explain" : "predict"}?${params}`, {
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
  state.classNames = model ? model.class_names : [];
  buildBars(state.classNames);
  // The server says how the model's inputs are made (GET /api/models' mode): digits or objects.
  state.digits = !model || !model.mode || model.mode.name === "digits";
  el.several.disabled = !state.digits; // numbers are made of digits
  if (!state.digits) el.several.checked = false;
  setMode();
}

function setMode() {
  // One digit or several: the titles, and an answer for the picture as it is now.
  state.number = state.digits && el.several.checked;
  state.generation += 1; // an answer still on its way is for the other model or mode
  el["draw-title"].textContent = state.number ? "Draw a number"
    : state.digits ? "Draw one digit" : "Draw or upload an item";
  el["draw-hint"].textContent = state.number
    ? "Write the digits side by side, a little apart. Or drop a photo of a handwritten number."
    : state.digits ? "Draw large, in the middle. Or drop a photo of a handwritten digit on the square."
      : "Draw the outline of a garment or a shoe, or drop a photo of one on the square.";
  el["seen-empty"].textContent = `Draw ${state.digits ? "a digit" : "an item of clothing"}: `
    + "this shows the 28\u00a0×\u00a028 image the model sees.";
  el.subtitle.textContent = state.digits ? "digit recognizer" : "clothing recognizer";
  document.title = `lenet · draw ${state.digits ? "a digit" : "an item"}`;
  el.bars.hidden = state.number;
  el["seen-figure"].hidden = state.number; // each digit's input is in the digit list instead
  el.digits.hidden = !state.number;
  if (!state.inked) {
    showIdle();
    return;
  }
  clearAnswer("Reading…"); // no answer of the other mode stays up while this one's is on its way
  predictNow();
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

function setTop(answer, look, mini) {
  // `answer`: a string, or words kept whole (class names: "T-shirt/top", "Ankle boot"), joined by spaces.
  const text = Array.isArray(answer) ? answer.join(" ") : answer;
  const inner = document.createElement("span"); // the grid's one item, however many parts
  inner.append(...(Array.isArray(answer) ? answer.flatMap((part, i) => {
    const whole = document.createElement("span");
    whole.className = "whole";
    whole.textContent = part;
    return i ? [" ", whole] : [whole];
  }) : [text]));
  el.top.replaceChildren(inner);
  // Long answers ("Ankle boot", "4 or 9?", "2026") get a smaller font to fit the box.
  const size = text.length <= 2 ? "" : text.length <= 7 && !/[a-z]{3}/i.test(text) ? "mid" : "long";
  el.top.className = ["top", look, size].filter(Boolean).join(" ");
  fitTop();
  // The phone layout's copy of the guess, next to the buttons under the canvas.
  el.mini.textContent = mini || "";
  el.mini.className = ["mini", look].filter(Boolean).join(" ");
}

function fitTop() {
  // From its class's size, the answer's font shrinks until it fits the box: nothing spills out,
  // and a class name is never split (fonts differ between machines, so this is measured).
  const top = el.top;
  top.style.fontSize = "";
  if (!top.clientWidth) return; // not laid out
  let size = parseFloat(getComputedStyle(top).fontSize);
  while (size > 10 && (top.scrollWidth > top.clientWidth || top.scrollHeight > top.clientHeight)) {
    size -= 1;
    top.style.fontSize = `${size}px`;
  }
}

function setMessage(text, look) {
  // The line under the guess; unsure and not-a-digit answers get a badge, not only a colour.
  const parts = [text];
  if (look === "unsure" || look === "reject") {
    const badge = document.createElement("span");
    badge.className = `badge ${look}`;
    badge.setAttribute("aria-hidden", "true");
    badge.textContent = look === "unsure" ? "?" : "!";
    parts.unshift(badge);
  }
  el.confidence.replaceChildren(...parts);
}

function setSeen(dataUrl) {
  el.seen.hidden = !dataUrl;
  el["seen-empty"].hidden = Boolean(dataUrl); // the hint, in words, until there is an input to show
  el["seen-caption"].hidden = !dataUrl;
  if (dataUrl) el.seen.src = dataUrl;
}

function clearAnswer(message) {
  setTop("?", "none");
  setMessage(message);
  el.verdict.textContent = "";
  el.advice.textContent = "";
  el.bars.classList.remove("dim");
  setBars(null, -1);
  setSeen(null);
  el.boxes.replaceChildren();
  el.digits.replaceChildren();
  clearInside();
}

function showIdle() {
  clearAnswer(state.number ? "Draw a number to start"
    : state.digits ? "Draw a digit to start" : "Draw or upload to start");
  el.status.textContent = "";
  el.status.classList.remove("error");
}

function capitalised(text) {
  return text ? `${text[0].toUpperCase()}${text.slice(1)}` : text;
}

function className(index) {
  return state.classNames[index] ?? String(index);
}

function notOneOfThem(what) {
  return state.digits ? `That doesn't look like a ${what}` : "That doesn't look like any of these items";
}

function onCanvas(box, frame) {
  // [x0, y0, x1, y1] in the sent image's pixels -> shares of the canvas side.
  return [frame.x0 + box[0] * frame.sx, frame.y0 + box[1] * frame.sy,
    frame.x0 + box[2] * frame.sx, frame.y0 + box[3] * frame.sy];
}

function adviseSize(tiny) {
  // Only for drawings: a photo's digit may be any size, preprocessing scales it anyway.
  el.advice.textContent = tiny ? (state.number ? "Draw bigger: make the digits taller"
    : "Draw bigger: fill most of the square") : "";
  return tiny ? ` ${el.advice.textContent}.` : "";
}

function showResult(result, frame = DRAWN) {
  el.bars.classList.remove("dim");
  el.boxes.replaceChildren();
  el.digits.replaceChildren();
  if ("digits" in result) showNumber(result, frame);
  else showDigit(result, frame);
  if (!state.upload) el.status.textContent = "";
  el.status.classList.remove("error");
}

function showDigit(result, frame) {
  const status = result.status || (result.prediction === null ? "no_digit" : "ok");
  let spoken;
  if (status === "no_digit") {
    setTop("?", "none");
    spoken = result.name ? capitalised(result.name) : "Nothing found";
    setMessage(spoken);
    setBars(null, -1);
  } else if (status === "not_a_digit") {
    setTop("?", "reject", state.digits ? "not a digit?" : "none of these?");
    spoken = notOneOfThem("digit");
    setMessage(spoken, "reject");
    setBars(result.probabilities, -1);
    el.bars.classList.add("dim");
  } else if (status === "unsure") {
    const [a, b] = result.between || [result.prediction, result.top_k[1] ? result.top_k[1].index : result.prediction];
    const question = `${className(a)} or ${className(b)}?`;
    setTop([className(a), "or", `${className(b)}?`], "unsure", question);
    const p = result.probabilities || [];
    const odds = (i) => `${className(i)} (${percent(p[i] ?? 0)})`;
    setMessage(`Not sure: ${odds(a)} or ${odds(b)}`, "unsure");
    spoken = `${question} Not sure.`;
    setBars(result.probabilities, result.prediction);
  } else {
    setTop([result.name], "", `${result.name} · ${percent(result.confidence)}`);
    const runnerUp = result.top_k && result.top_k[1];
    const next = runnerUp ? ` · then ${runnerUp.name ?? ""} (${percent(runnerUp.probability ?? 0)})` : "";
    setMessage(`${percent(result.confidence)} sure${next}`);
    spoken = `${result.name}, ${percent(result.confidence)} sure.`;
    setBars(result.probabilities, result.prediction);
  }
  let tiny = false;
  if (result.box && !frame.photo) {
    const [x0, y0, x1, y1] = onCanvas(result.box, frame);
    tiny = Math.max(x1 - x0, y1 - y0) < TINY;
  }
  el.verdict.textContent = spoken + adviseSize(tiny);
  setSeen(result.input_png);
  if ("layers" in result) showInside(result).catch((error) => showError(`Inside the network: ${error.message}`));
}

function showNumber(result, frame) {
  const digits = result.digits || [];
  drawBoxes(digits, frame);
  listDigits(digits);
  setSeen(null);
  let spoken;
  if (result.number == null) {
    setTop("?", "none");
    spoken = result.reason ? capitalised(result.reason) : "No digits found";
    setMessage(spoken);
  } else if (result.status === "not_a_digit") {
    setTop(result.number, "reject", "not a number?");
    spoken = notOneOfThem("number");
    setMessage(spoken, "reject");
  } else if (result.status === "unsure") {
    setTop(result.number, "unsure", `${result.number}?`);
    const doubts = digits.map((d, i) => (d.status === "ok" ? null : d.between
      ? `digit ${i + 1} (${className(d.between[0])} or ${className(d.between[1])}?)`
      : `digit ${i + 1} (not a digit?)`)).filter(Boolean);
    setMessage(`Not sure of ${doubts.join(", ")}`, "unsure");
    spoken = `${result.number}? Not sure of ${doubts.join(", ")}.`;
  } else {
    setTop(result.number, "", result.number);
    const n = digits.length;
    setMessage(n === 1 ? "1 digit, sure" : `${n} digits, each sure`);
    spoken = `${result.number}, ${n === 1 ? "1 digit" : `${n} digits`}, sure.`;
  }
  let tiny = false;
  if (digits.length && !frame.photo) {
    const tallest = Math.max(...digits.filter((d) => d.box).map((d) => {
      const [, y0, , y1] = onCanvas(d.box, frame);
      return y1 - y0;
    }));
    tiny = tallest < TINY_NUMBER;
  }
  el.verdict.textContent = spoken + adviseSize(tiny);
}

function drawBoxes(digits, frame) {
  // Each digit's box over the drawing, placed in shares of the canvas (the overlay has its size).
  const pct = (v) => `${(v * 100).toFixed(2)}%`;
  el.boxes.replaceChildren(...digits.filter((d) => d.box).map((d) => {
    const [x0, y0, x1, y1] = onCanvas(d.box, frame);
    const box = document.createElement("div");
    box.className = ["digit-box", LOOK[d.status]].filter(Boolean).join(" ");
    Object.assign(box.style, { left: pct(x0), top: pct(y0), width: pct(x1 - x0), height: pct(y1 - y0) });
    const label = document.createElement("span");
    label.textContent = d.prediction == null ? "?" : className(d.prediction);
    box.append(label);
    return box;
  }));
}

function listDigits(digits) {
  // The result panel's list: what the model saw of each digit, its answer and how sure.
  el.digits.replaceChildren(...digits.map((d) => {
    const item = document.createElement("li");
    item.className = LOOK[d.status] || "";
    if (d.input_png) {
      const img = document.createElement("img");
      img.src = d.input_png;
      img.alt = "";
      img.width = img.height = 28;
      item.append(img);
    }
    const name = d.prediction == null ? "?" : className(d.prediction);
    const what = d.status === "unsure" && d.between ? `${className(d.between[0])} or ${className(d.between[1])}?`
      : d.status === "not_a_digit" ? `${name}: not a digit?` : `${name} · ${percent(d.confidence ?? 0)}`;
    const text = document.createElement("span");
    text.textContent = what;
    item.append(text);
    return item;
  }));
}

function showError(message) {
  el.status.textContent = message;
  el.status.classList.add("error");
}

/* ---------- inside the network ---------- */

function explaining() {
  // /api/explain answers one digit: with "Several digits" on, the panel waits.
  return el.inside.open && !state.number;
}

function insideNote() {
  el["inside-note"].textContent = state.number ? "Inside the network looks at one digit: turn off Several digits."
    : state.inked ? "" : `Draw ${state.digits ? "a digit" : "an item"} to see what each layer makes of it.`;
}

function clearInside() {
  el["inside-input"].hidden = true;
  el["inside-attr"].hidden = true;
  el["inside-attr"].removeAttribute("src");
  el.steps.replaceChildren();
  for (const layer of el.layers.querySelectorAll("canvas")) {
    layer.getContext("2d").clearRect(0, 0, layer.width, layer.height);
  }
  el["map-info"].replaceChildren();
  state.layers = [];
  insideNote();
}

function loadImage(url) {
  const img = new Image();
  img.src = url;
  return img.decode().then(() => img);
}

function buildLayers(layers) {
  // One <li> per layer: its title and a canvas per map (a vector layer: one canvas, a pixel per unit).
  el.layers.replaceChildren(...layers.map((layer, li) => {
    const item = document.createElement("li");
    const title = document.createElement("span");
    title.className = "layer-title";
    title.textContent = layer.title;
    const maps = document.createElement("div");
    maps.className = layer.shape.length === 3 ? "maps" : "maps vector";
    const count = layer.shape.length === 3 ? layer.shape[0] : 1;
    for (let i = 0; i < count; i += 1) {
      const canvas = document.createElement("canvas");
      [canvas.width, canvas.height] = layer.shape.length === 3 ? [layer.shape[2], layer.shape[1]] : [layer.shape[0], 1];
      canvas.className = "map";
      canvas.tabIndex = 0;
      canvas.dataset.layer = String(li);
      canvas.dataset.map = String(i);
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", count > 1 ? `${layer.name} map ${i + 1}` : `${layer.name}, ${layer.shape[0]} units`);
      const show = (event) => showMap(li, i, event);
      canvas.addEventListener("pointerenter", show);
      canvas.addEventListener("pointermove", show);
      canvas.addEventListener("click", show);
      canvas.addEventListener("focus", show);
      maps.append(canvas);
    }
    item.append(title, maps);
    return item;
  }));
}

async function showInside(result) {
  // Each layer's sprite cut into its maps: drawn pixel for pixel, scaled up by CSS.
  const layers = result.layers || [];
  state.layers = layers;
  insideNote();
  if (!layers.length) {
    clearInside();
    el["inside-note"].textContent = "Nothing found to look inside.";
    return;
  }
  el["inside-input"].src = result.input_png;
  el["inside-input"].hidden = false;
  if (result.attribution) {
    el["inside-attr"].src = result.attribution.png;
    el["inside-attr"].title = `${result.attribution.method}, for ${className(result.attribution.target)}`;
  }
  el["inside-attr"].hidden = !el["attr-toggle"].checked || !result.attribution;
  showSteps(result.steps);
  const layout = layers.map((l) => `${l.name}:${l.shape.join("x")}`).join(" ");
  if (layout !== state.layout) {
    state.layout = layout;
    buildLayers(layers);
  }
  const sprites = await Promise.all(layers.map((l) => loadImage(l.sprite)));
  if (state.layers !== layers) return; // a newer answer arrived while these decoded
  const items = el.layers.children;
  layers.forEach((layer, li) => {
    const canvases = items[li].querySelectorAll("canvas");
    canvases.forEach((canvas, i) => {
      const ctx = canvas.getContext("2d");
      const sx = (i % layer.columns) * canvas.width;
      const sy = Math.floor(i / layer.columns) * canvas.height;
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(sprites[li], sx, sy, canvas.width, canvas.height, 0, 0, canvas.width, canvas.height);
    });
  });
  el.layers.dataset.drawn = String(Number(el.layers.dataset.drawn) + 1); // the tests wait on this
  const open = el["map-info"].dataset.at;
  if (open) showMap(...open.split(",").map(Number));
}

function fmt(v) {
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3);
}

function showMap(li, i, event) {
  // The map (or unit) under the pointer or focus: its value range and the kernel that made it.
  const layer = state.layers[li];
  if (!layer) return;
  el["map-info"].dataset.at = `${li},${i}`;
  const parts = [];
  const head = document.createElement("p");
  if (layer.shape.length === 3) {
    head.textContent = `${layer.name} map ${i + 1} of ${layer.shape[0]}: values ${fmt(layer.map_min[i])} … `
      + `${fmt(layer.map_max[i])} (layer ${fmt(layer.min)} … ${fmt(layer.max)})`;
  } else {
    let unit = 0;
    if (event && event.target && event.clientX !== undefined) {
      const box = event.target.getBoundingClientRect();
      unit = Math.min(layer.shape[0] - 1, Math.max(0, Math.floor((event.clientX - box.left) / box.width * layer.shape[0])));
    }
    const label = layer.name === "output" ? ` (${className(unit)})` : "";
    head.textContent = `${layer.name} unit ${unit + 1}${label} of ${layer.shape[0]}: ${fmt(layer.values[unit])}`
      + ` (layer ${fmt(layer.min)} … ${fmt(layer.max)})`;
  }
  parts.push(head);
  const k = layer.kernels;
  if (k && layer.shape.length === 3) {
    const [, ins, kh, kw] = k.shape;
    const inputs = k.inputs ? k.inputs[i] : [...Array(ins).keys()];
    const row = document.createElement("div");
    row.className = "kernels";
    const caption = document.createElement("span");
    caption.textContent = ins === 1 ? "kernel" : `kernels from ${inputs.length} of ${ins} input maps`;
    row.append(caption);
    loadImage(k.sprite).then((sprite) => {
      for (const c of inputs) {
        const canvas = document.createElement("canvas");
        canvas.width = kw;
        canvas.height = kh;
        canvas.className = "kernel";
        canvas.title = `input map ${c + 1}`;
        canvas.getContext("2d").drawImage(sprite, c * kw, i * kh, kw, kh, 0, 0, kw, kh);
        row.append(canvas);
      }
    }).catch(() => {});
    const scale = document.createElement("small");
    scale.textContent = `grey 0, white +${fmt(k.bound)}, black −${fmt(k.bound)}`;
    parts.push(row, scale);
  } else if (layer.shape.length === 3 && li > 0) {
    const note = document.createElement("small");
    note.textContent = `subsampled from ${state.layers[li - 1].name} map ${i + 1}`;
    parts.push(note);
  }
  el["map-info"].replaceChildren(...parts);
}

function showSteps(steps) {
  el.steps.hidden = !state.steps;
  if (!state.steps || !steps) return;
  el.steps.replaceChildren(...steps.map((step) => {
    const item = document.createElement("li");
    const img = document.createElement("img");
    img.src = step.png;
    img.alt = step.name;
    const caption = document.createElement("span");
    caption.textContent = step.name;
    item.append(img, caption);
    return item;
  }));
}

function setupInside() {
  el.inside.open = window.matchMedia(WIDE).matches;
  el.inside.addEventListener("toggle", () => {
    insideNote();
    if (el.inside.open && state.inked && !state.number) predictNow(); // fill it for the picture as it is
  });
  el["attr-toggle"].addEventListener("change", () => {
    el["inside-attr"].hidden = !el["attr-toggle"].checked || !el["inside-attr"].getAttribute("src");
  });
  el["steps-toggle"].addEventListener("click", () => {
    state.steps = !state.steps;
    el["steps-toggle"].setAttribute("aria-pressed", String(state.steps));
    el.steps.hidden = !state.steps;
    if (state.steps && state.inked && explaining()) predictNow();
  });
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
  el.several.addEventListener("change", setMode);
  setupDrop();
  setupInside();
  window.addEventListener("resize", fitTop); // the box is smaller on a phone
  showIdle();
  loadModels().catch((error) => showError(error.message));
}

main();
