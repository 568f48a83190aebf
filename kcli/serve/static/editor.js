// The web editor of `kandinsky serve`: generate, paint a mask and inpaint, grow the canvas and outpaint, fuse
// texts and pictures, and keep the session's images in a gallery. Plain JavaScript, no dependencies.
//
// Endpoints (all on this server):
//   GET  /kandinsky/v1/status, /kandinsky/v1/schema   the checkpoint; each mode's settings and bounds
//   POST /kandinsky/v1/generate|outpaint|fuse          -> {images: [{png, seed, metadata}], interrupted}
//   POST /sdapi/v1/img2img with init_images and mask   inpainting (white = repaint), AUTOMATIC1111's shape
//   GET  /sdapi/v1/progress, POST /sdapi/v1/interrupt, GET /sdapi/v1/samplers
"use strict";

const $ = (id) => document.getElementById(id);

// The settings box: these fields of the schema's "generate" mode, in this order.
const SETTINGS = ["negative", "seed", "width", "height", "steps", "prior_steps", "guidance", "prior_guidance",
                  "num_images", "sampler"];
const LABELS = {negative: "Negative", seed: "Seed", width: "Width", height: "Height", steps: "Steps",
                prior_steps: "Prior steps", guidance: "Guidance", prior_guidance: "Prior guidance",
                num_images: "Images", sampler: "Sampler"};
const SIDES = ["top", "right", "bottom", "left"];
const PAINTED = 128;  // mask alpha from which a pixel is repainted: the brush's soft (antialiased) rim counts half
const MAX_GROW = 2048;  // pixels per side; the server refuses canvases beyond its own limits anyway

const state = {
  key: sessionStorage.getItem("kandinsky-api-key") || "",
  busy: false,
  width: 0, height: 0,  // the picture on the canvas, in pixels
  scale: 1,  // screen pixels per picture pixel
  grow: {top: 0, right: 0, bottom: 0, left: 0},  // what the handles added, in picture pixels
  gallery: [],  // {b64, seed, mode, metadata}
  selected: -1,
};

// ---- talking to the server ----------------------------------------------------------------------------

async function api(path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.key) headers.Authorization = "Bearer " + state.key;
  const answer = await fetch(path, {method: body === undefined ? "GET" : "POST", headers,
                                    body: body === undefined ? undefined : JSON.stringify(body)});
  let data = {};
  try { data = await answer.json(); } catch (e) { /* not JSON: the status says enough */ }
  if (answer.status === 401) $("key-box").hidden = false;
  if (!answer.ok) throw new Error(data.error || `${answer.status} ${answer.statusText}`);
  return data;
}

async function start() {
  $("api-key").value = state.key;
  try {
    const [status, schema, samplers] = await Promise.all(
      [api("/kandinsky/v1/status"), api("/kandinsky/v1/schema"), api("/sdapi/v1/samplers")]);
    $("model").textContent = `${status.checkpoint} · kandinsky ${status.version}`;
    buildSettings(schema.generate, samplers);
    say("Ready.");
  } catch (e) {
    say(e.message, true);
  }
}

function buildSettings(fields, samplers) {
  const box = $("settings");
  box.textContent = "";
  for (const name of SETTINGS) {
    const f = fields[name];
    if (!f) continue;
    const label = document.createElement("label");
    label.textContent = LABELS[name];
    label.htmlFor = "set-" + name;
    label.title = f.help;
    let input;
    if (name === "sampler") {
      input = document.createElement("select");
      for (const [value, text] of [["", "default (the checkpoint's)"],
                                   ...samplers.map((s) => [s.aliases[0], `${s.name} (${s.aliases[0]})`])]) {
        input.append(new Option(text, value));
      }
    } else {
      input = document.createElement("input");
      input.type = f.type === "int" || f.type === "float" ? "number" : "text";
      if (f.min !== null) input.min = f.min;
      if (f.max !== null) input.max = f.max;
      if (f.type === "float") input.step = "0.1";
      if (f.default !== null) input.value = f.default;
      else input.placeholder = name === "seed" ? "random" : "model default";
    }
    input.id = "set-" + name;
    input.dataset.type = f.type;
    input.title = f.help;
    box.append(label, input);
  }
}

// The settings the user filled in, in Kandinsky's own names (empty fields are left to the server).
function settings() {
  const out = {};
  for (const input of $("settings").querySelectorAll("input, select")) {
    const name = input.id.slice(4), raw = input.value.trim();
    if (raw === "") continue;
    out[name] = input.dataset.type === "int" ? parseInt(raw, 10)
      : input.dataset.type === "float" ? parseFloat(raw) : raw;
  }
  return out;
}

function without(object, ...keys) {
  const out = {...object};
  for (const k of keys) delete out[k];
  return out;
}

// ---- jobs and progress --------------------------------------------------------------------------------

async function job(label, run) {
  if (state.busy) return;
  state.busy = true;
  document.body.dataset.busy = "1";
  for (const b of document.querySelectorAll("button.primary")) b.disabled = true;
  $("progress").hidden = false;
  showProgress({progress: 0, textinfo: "queued"});
  say(`${label}…`);
  const timer = setInterval(pollProgress, 300);
  try {
    const running = run();
    pollProgress();  // at once too: where the job stands in the queue
    const {images, interrupted} = await running;
    for (const image of images) addToGallery(image);
    if (images.length) {
      select(state.gallery.length - 1);
      await loadPicture(dataUrl(images[images.length - 1].b64));
    }
    const count = `${images.length} image${images.length === 1 ? "" : "s"}`;
    say(`${label}: ${count}${interrupted ? " (stopped)" : ""}.`);
  } catch (e) {
    say(`${label} failed: ${e.message}`, true);
  } finally {
    clearInterval(timer);
    state.busy = false;
    delete document.body.dataset.busy;
    for (const b of document.querySelectorAll("button.primary")) b.disabled = false;
    $("progress").hidden = true;
  }
}

async function pollProgress() {
  try {
    showProgress(await api("/sdapi/v1/progress"));
  } catch (e) { /* the job's own answer reports errors */ }
}

function showProgress(p) {
  $("bar").style.width = `${Math.round(100 * (p.progress || 0))}%`;
  const waiting = p.state && p.state.job_count > 1 ? ` · ${p.state.job_count - 1} waiting` : "";
  const done = p.progress ? `${Math.round(100 * p.progress)}%` : "queued";
  $("progress-text").textContent = (p.textinfo || done) + waiting;
}

function say(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

// Answers of Kandinsky's own endpoints -> gallery entries.
function own(answer) {
  return {images: answer.images.map((i) => ({b64: i.png, seed: i.seed, metadata: i.metadata})),
          interrupted: answer.interrupted};
}

function generate() {
  const prompt = $("prompt").value.trim();
  if (!prompt) return say("Write a prompt first.", true);
  job("Generate", async () => own(await api("/kandinsky/v1/generate", {prompt, ...settings()})));
}

function inpaint() {
  if (!state.width) return say("Generate or open a picture first.", true);
  if (!maskPainted()) return say("Paint over the part to repaint first.", true);
  const s = settings();
  // AUTOMATIC1111's img2img with a mask: white repaints. The picture's own size is kept.
  const body = {prompt: $("prompt").value.trim(), negative_prompt: s.negative, seed: s.seed ?? -1,
                steps: s.steps, cfg_scale: s.guidance, sampler_name: s.sampler, prior_steps: s.prior_steps,
                prior_guidance: s.prior_guidance, batch_size: s.num_images, init_images: [pictureUrl()],
                mask: maskUrl()};
  job("Inpaint", async () => {
    const answer = await api("/sdapi/v1/img2img", body);
    const info = JSON.parse(answer.info || "{}");
    const seeds = info.all_seeds || [];
    return {images: answer.images.map((b64, i) => ({b64, seed: seeds[i], metadata: pngMetadata(b64)})),
            interrupted: !!info.interrupted};
  });
}

function outpaint() {
  if (!state.width) return say("Generate or open a picture first.", true);
  const expand = SIDES.filter((s) => state.grow[s] > 0).map((s) => `${s}=${state.grow[s]}`).join(",");
  if (!expand) return say("Drag a handle outwards to grow the canvas first.", true);
  const body = {prompt: $("prompt").value.trim(), image: pictureUrl(), expand,
                ...without(settings(), "width", "height")};
  job("Outpaint", async () => own(await api("/kandinsky/v1/outpaint", body)));
}

function fuse() {
  const rows = [...$("fuse-items").children];
  if (!rows.length) return say("Add texts or pictures to fuse first.", true);
  const items = rows.map((r) => (r.dataset.kind === "text" ? r.querySelector("input[type=text]").value
                                                           : {image: r.dataset.image}));
  const weights = rows.map((r) => parseFloat(r.querySelector("input[type=range]").value));
  job("Fuse", async () => own(await api("/kandinsky/v1/fuse", {items, weights, ...settings()})));
}

// ---- the canvas: picture, mask, handles ---------------------------------------------------------------

function dataUrl(b64) {
  return "data:image/png;base64," + b64;
}

async function loadPicture(src) {
  const image = new Image();
  image.src = src;
  await image.decode();
  const picture = $("picture"), mask = $("mask");
  state.width = picture.width = mask.width = image.naturalWidth;
  state.height = picture.height = mask.height = image.naturalHeight;
  picture.getContext("2d").drawImage(image, 0, 0);
  state.scale = Math.min(6, 480 / Math.max(state.width, state.height));
  state.grow = {top: 0, right: 0, bottom: 0, left: 0};
  $("frame").hidden = false;
  $("empty").hidden = true;
  layout();
}

function layout() {
  const s = state.scale, g = state.grow;
  const frame = $("frame");
  frame.style.width = `${(state.width + g.left + g.right) * s}px`;
  frame.style.height = `${(state.height + g.top + g.bottom) * s}px`;
  for (const canvas of [$("picture"), $("mask")]) {
    Object.assign(canvas.style, {left: `${g.left * s}px`, top: `${g.top * s}px`,
                                 width: `${state.width * s}px`, height: `${state.height * s}px`});
  }
  const grown = SIDES.filter((side) => g[side] > 0).map((side) => `${side} ${g[side]}`);
  $("grow-text").textContent = `${state.width}×${state.height}`
    + (grown.length ? `, growing ${grown.join(", ")}` : "");
}

function pictureUrl() {
  return $("picture").toDataURL("image/png");
}

function maskPainted() {
  const {data} = $("mask").getContext("2d").getImageData(0, 0, state.width, state.height);
  for (let i = 3; i < data.length; i += 4) if (data[i] >= PAINTED) return true;
  return false;
}

// The painted strokes as a black-and-white mask the size of the picture (white = repaint).
function maskUrl() {
  const src = $("mask").getContext("2d").getImageData(0, 0, state.width, state.height);
  const out = document.createElement("canvas");
  out.width = state.width;
  out.height = state.height;
  const ctx = out.getContext("2d"), bw = ctx.createImageData(state.width, state.height);
  for (let i = 0; i < src.data.length; i += 4) {
    const v = src.data[i + 3] >= PAINTED ? 255 : 0;
    bw.data[i] = bw.data[i + 1] = bw.data[i + 2] = v;
    bw.data[i + 3] = 255;
  }
  ctx.putImageData(bw, 0, 0);
  return out.toDataURL("image/png");
}

function paintMask() {
  const mask = $("mask"), ctx = mask.getContext("2d", {willReadFrequently: true});  // read back to send
  let last = null;
  const at = (e) => {
    const r = mask.getBoundingClientRect();
    return [(e.clientX - r.left) * state.width / r.width, (e.clientY - r.top) * state.height / r.height];
  };
  const stroke = (to) => {
    ctx.strokeStyle = ctx.fillStyle = getComputedStyle(document.documentElement).getPropertyValue("--mask");
    ctx.lineWidth = $("brush").value / state.scale;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.globalCompositeOperation = $("erase").checked ? "destination-out" : "source-over";
    ctx.beginPath();
    if (last) {
      ctx.moveTo(...last);
      ctx.lineTo(...to);
      ctx.stroke();
    } else {
      ctx.arc(to[0], to[1], ctx.lineWidth / 2, 0, 2 * Math.PI);
      ctx.fill();
    }
    last = to;
  };
  mask.addEventListener("pointerdown", (e) => {
    mask.setPointerCapture(e.pointerId);
    last = null;
    stroke(at(e));
  });
  mask.addEventListener("pointermove", (e) => { if (last) stroke(at(e)); });
  for (const type of ["pointerup", "pointercancel"]) mask.addEventListener(type, () => { last = null; });
}

function dragHandles() {
  for (const handle of document.querySelectorAll(".handle")) {
    const side = handle.dataset.side;
    let from = null;
    handle.addEventListener("pointerdown", (e) => {
      handle.setPointerCapture(e.pointerId);
      from = {x: e.clientX, y: e.clientY, grow: state.grow[side]};
      e.preventDefault();
    });
    handle.addEventListener("pointermove", (e) => {
      if (!from) return;
      const dx = (e.clientX - from.x) / state.scale, dy = (e.clientY - from.y) / state.scale;
      const delta = {top: -dy, bottom: dy, left: -dx, right: dx}[side];
      state.grow[side] = Math.max(0, Math.min(MAX_GROW, Math.round(from.grow + delta)));
      layout();
    });
    for (const type of ["pointerup", "pointercancel"]) handle.addEventListener(type, () => { from = null; });
  }
}

// ---- the gallery and fuse items -----------------------------------------------------------------------

// The metadata a PNG of ours carries in its "kandinsky" iTXt chunk (answers of img2img have no other copy).
function pngMetadata(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  const text = (a, b) => new TextDecoder().decode(bytes.subarray(a, b));
  for (let p = 8; p + 8 <= bytes.length;) {
    const length = view.getUint32(p), type = text(p + 4, p + 8), data = p + 8;
    if (type === "IEND") break;
    if (type === "iTXt") {
      const key = bytes.indexOf(0, data);
      if (text(data, key) === "kandinsky" && bytes[key + 1] === 0) {  // not compressed
        const language = bytes.indexOf(0, key + 3), translated = bytes.indexOf(0, language + 1);
        try { return JSON.parse(text(translated + 1, data + length)); } catch (e) { return {}; }
      }
    }
    p = data + length + 4;
  }
  return {};
}

function addToGallery(image) {
  image.mode = (image.metadata && image.metadata.mode) || "image";
  state.gallery.push(image);
  const thumb = document.createElement("img");
  thumb.src = dataUrl(image.b64);
  thumb.alt = `${image.mode}, seed ${image.seed}`;
  thumb.title = thumb.alt;
  thumb.dataset.index = state.gallery.length - 1;
  thumb.addEventListener("click", () => select(Number(thumb.dataset.index)));
  $("gallery").append(thumb);
}

function select(index) {
  state.selected = index;
  const image = state.gallery[index], m = image.metadata || {};
  for (const t of $("gallery").children) t.classList.toggle("selected", Number(t.dataset.index) === index);
  $("details").hidden = false;
  $("detail-image").src = dataUrl(image.b64);
  $("download").href = dataUrl(image.b64);
  $("download").download = `kandinsky-${image.mode}-${image.seed}.png`;
  const shown = {mode: m.mode, seed: image.seed, model: m.model, sampler: m.sampler, settings: m.settings,
                 inputs: m.inputs, timings: m.timings};
  $("meta").textContent = JSON.stringify(shown, null, 2);
}

function addFuseItem(kind, value) {
  const row = document.createElement("div");
  row.className = "fuse-item";
  row.dataset.kind = kind;
  if (kind === "text") {
    const input = document.createElement("input");
    input.type = "text";
    input.value = value;
    input.placeholder = "a text";
    row.append(input);
  } else {
    row.dataset.image = value;
    const thumb = document.createElement("img");
    thumb.src = value;
    thumb.alt = "a picture to fuse";
    row.append(thumb);
  }
  const weight = document.createElement("input"), shown = document.createElement("output");
  Object.assign(weight, {type: "range", min: "0", max: "1", step: "0.05", value: "0.5", title: "weight"});
  shown.textContent = weight.value;
  weight.addEventListener("input", () => { shown.textContent = weight.value; });
  const remove = document.createElement("button");
  remove.textContent = "×";
  remove.title = "Remove";
  remove.addEventListener("click", () => row.remove());
  row.append(weight, shown, remove);
  $("fuse-items").append(row);
}

// ---- wiring -------------------------------------------------------------------------------------------

function wire() {
  $("generate").addEventListener("click", generate);
  $("inpaint").addEventListener("click", inpaint);
  $("outpaint").addEventListener("click", outpaint);
  $("fuse").addEventListener("click", fuse);
  $("interrupt").addEventListener("click",
                                  () => api("/sdapi/v1/interrupt", {}).catch((e) => say(e.message, true)));
  $("clear-mask").addEventListener("click", () => $("mask").getContext("2d").clearRect(0, 0, state.width,
                                                                                          state.height));
  $("reset-grow").addEventListener("click", () => {
    state.grow = {top: 0, right: 0, bottom: 0, left: 0};
    if (state.width) layout();
  });
  $("upload").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    const url = URL.createObjectURL(file);
    try {
      await loadPicture(url);
      say(`Opened ${file.name}.`);
    } catch (error) {
      say(`${file.name} is not a picture the browser can read.`, true);
    } finally {
      URL.revokeObjectURL(url);
    }
  });
  $("fuse-add-text").addEventListener("click", () => addFuseItem("text", $("prompt").value.trim()));
  $("fuse-add-image").addEventListener("click", () => {
    if (!state.width) return say("Generate or open a picture first.", true);
    addFuseItem("image", pictureUrl());
  });
  $("edit").addEventListener("click", () => {
    if (state.selected >= 0) loadPicture(dataUrl(state.gallery[state.selected].b64));
  });
  $("api-key").addEventListener("change", () => {
    state.key = $("api-key").value.trim();
    sessionStorage.setItem("kandinsky-api-key", state.key);
    start();
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate();  // Ctrl+Enter generates
  });
  paintMask();
  dragHandles();
}

wire();
start();
