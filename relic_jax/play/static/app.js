// relic play: the page's side of relic_jax/play/protocol.py.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  ws: null, ready: null, started: false, picked: 0, upload: null, keys: new Set(),
  queue: [], shown: 0, received: 0, lastStats: null, errors: [], messages: [],
  path: [], windowFrom: 0, mode: "relic", recording: false, clock0: 0, fps: 17.5,
};
window.relicPlay = state;  // what the browser test reads

function log(text, cls) {
  const div = document.createElement("div");
  div.textContent = text;
  if (cls) div.className = cls;
  $("messages").prepend(div);
}

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { $("status").textContent = "connected"; };
  ws.onclose = () => { $("status").textContent = "disconnected"; };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") return onMessage(JSON.parse(ev.data));
    const index = new DataView(ev.data).getUint32(0);
    const blob = new Blob([ev.data.slice(4)], { type: "image/jpeg" });
    createImageBitmap(blob).then((bmp) => { state.queue.push({ index, bmp }); state.received++; });
  };
  state.ws = ws;
}

function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}

function onMessage(m) {
  state.messages.push(m.type);
  if (m.type === "ready") {
    state.ready = m; state.fps = m.fps; state.mode = m.mode;
    document.querySelector(`input[name=mode][value=${m.mode}]`).checked = true;
    $("maxframes").textContent = m.max_frames;
  } else if (m.type === "busy") {
    $("status").textContent = "busy"; log(m.message, "error");
  } else if (m.type === "started") {
    state.started = true; state.queue = []; state.path = [[0, 0, 0]]; state.windowFrom = 0;
    state.clock0 = performance.now(); state.shown = 0; state.mode = m.mode;
    $("status").textContent = `playing (${m.mode})`;
    showMemory(m.memory); $("compiles").textContent = m.compiles;
  } else if (m.type === "stats") {
    state.lastStats = m;
    $("fps").textContent = m.fps.toFixed(1);
    $("block").textContent = m.block_ms.toFixed(0);
    $("p50").textContent = m.block_ms_p50.toFixed(0);
    $("p95").textContent = m.block_ms_p95.toFixed(0);
    $("realtime").textContent = m.realtime ? "faster than real time" : "slower than real time";
    $("compiles").textContent = m.compiles;
    showMemory(m.memory);
    state.path.length = m.path_from;
    state.path.push(...m.path);
    state.windowFrom = m.window_from;
    drawMap();
  } else if (m.type === "mode") {
    state.mode = m.mode; showMemory(m.memory);
    log(`memory is now ${m.mode} (rebuilt in ${m.rebuild_s.toFixed(2)} s)`, "note");
    $("status").textContent = `playing (${m.mode})`;
  } else if (m.type === "recording") {
    log(`recording from frame ${m.from_frame}`, "note");
  } else if (m.type === "recorded") {
    const a = m.video_url ? `<a href="${m.video_url}" download>MP4</a> · ` : "";
    const div = document.createElement("div");
    div.className = "note";
    div.innerHTML = `recorded: ${a}<a href="${m.actions_url}" download>actions</a> · ` +
      `<a href="${m.image_url}" download>start image</a>`;
    $("messages").prepend(div);
    log(`replay: ${m.replay}`);
  } else if (m.type === "capacity") {
    log(m.message, m.stopped ? "error" : "note");
    if (m.stopped) $("status").textContent = "memory full: reset to go on";
  } else if (m.type === "error") {
    state.errors.push(m.message); log(m.message, "error");
  }
}

function showMemory(mem) {
  $("mode").textContent = mem.mode;
  $("winframes").textContent = mem.window_frames;
  $("wintok").textContent = mem.window_tokens;
  $("memframes").textContent = mem.memory_frames;
  $("memtok").textContent = mem.memory_tokens;
  $("frames").textContent = mem.frames;
  $("maxframes").textContent = mem.max_frames;
  $("kv").textContent = (mem.kv_bytes / 2 ** 20).toFixed(2);
  $("kvused").textContent = (mem.kv_bytes_used / 2 ** 20).toFixed(2);
  $("fill").style.width = `${Math.min(100, 100 * mem.frames / mem.max_frames)}%`;
}

// frames are drawn at the video's frame rate from the queue the server fills
function draw() {
  const ctx = $("video").getContext("2d");
  if (state.started && state.queue.length) {
    const due = (performance.now() - state.clock0) / 1000 * state.fps;
    while (state.queue.length && (state.shown <= due || state.queue.length > 48)) {
      const f = state.queue.shift();
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(f.bmp, 0, 0, 512, 512);
      f.bmp.close();
      state.shown++;
    }
    $("shown").textContent = state.shown;
  }
  requestAnimationFrame(draw);
}

function drawMap() {
  const c = $("minimap"), ctx = c.getContext("2d");
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, c.width, c.height);
  const p = state.path;
  let r = 1;
  for (const q of p) r = Math.max(r, Math.abs(q[0]), Math.abs(q[1]));
  const s = (c.width / 2 - 12) / r, cx = c.width / 2, cy = c.height / 2;
  const held = state.mode !== "window";
  p.forEach((q, i) => {
    const inWindow = i >= state.windowFrom;
    ctx.fillStyle = inWindow ? "#4c6" : (held || i === 0 ? "#39f" : "#666");
    ctx.fillRect(cx + q[0] * s - 2, cy - q[1] * s - 2, 4, 4);
  });
  const last = p[p.length - 1];
  if (last) {  // the camera, and where it looks
    const x = cx + last[0] * s, y = cy - last[1] * s;
    ctx.strokeStyle = "#fff"; ctx.beginPath(); ctx.moveTo(x, y);
    ctx.lineTo(x + 14 * Math.sin(last[2]), y - 14 * Math.cos(last[2])); ctx.stroke();
  }
}

function sendKeys() {
  send({ type: "keys", keys: [...state.keys], speed: parseFloat($("speed").value) });
}

function onKey(ev, down) {
  const known = state.ready && (ev.code in state.ready.keys || ev.code.startsWith("Shift"));
  if (!known) return;
  ev.preventDefault();
  const had = state.keys.has(ev.code);
  if (down) state.keys.add(ev.code); else state.keys.delete(ev.code);
  if (had !== down) sendKeys();
}

async function loadStarts() {
  const r = await fetch("/starts");
  const j = await r.json();
  $("starts").innerHTML = "";
  j.starts.forEach((s) => {
    const img = document.createElement("img");
    img.src = s.image; img.title = s.caption;
    img.onclick = () => {
      state.picked = s.index; state.upload = null;
      document.querySelectorAll("#starts img").forEach((e) => e.classList.remove("picked"));
      img.classList.add("picked"); $("caption").value = s.caption;
    };
    $("starts").append(img);
    if (s.index === 0) img.click();
  });
}

$("upload").onchange = () => {
  const file = $("upload").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => { state.upload = reader.result; };
  reader.readAsDataURL(file);
};
$("start").onclick = () => {
  const mode = document.querySelector("input[name=mode]:checked").value;
  const msg = { type: "start", caption: $("caption").value, mode };
  if (state.upload) { msg.start = "upload"; msg.image = state.upload; } else msg.start = state.picked;
  send(msg);
  $("video").focus();
};
$("reset").onclick = () => { send({ type: "reset" }); $("video").focus(); };
$("record").onclick = () => {
  state.recording = !state.recording;
  $("record").classList.toggle("on", state.recording);
  $("record").textContent = state.recording ? "stop recording" : "record";
  send({ type: "record", on: state.recording });
};
document.querySelectorAll("input[name=mode]").forEach((e) => {
  e.onchange = () => { if (state.started) send({ type: "mode", mode: e.value }); };
});
$("speed").oninput = () => { $("speedval").textContent = $("speed").value; sendKeys(); };
$("video").addEventListener("keydown", (ev) => onKey(ev, true));
$("video").addEventListener("keyup", (ev) => onKey(ev, false));
$("video").addEventListener("blur", () => { if (state.keys.size) { state.keys.clear(); sendKeys(); } });

connect();
loadStarts();
requestAnimationFrame(draw);
