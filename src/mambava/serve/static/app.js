// mambava serve's page: frames of a video file or the webcam go to the server as JPEG over a WebSocket
// (/ws), each answer (valence, arousal, face box) is drawn over the video, over time and on the circumplex; the
// seven expression probabilities, where the server gives them, as bars beside the circumplex.
// Nothing is loaded from the network. window.mambava holds the state (the browser test reads it).
"use strict";

const $ = (id) => document.getElementById(id);
const video = $("video"), overlay = $("overlay"), timeline = $("timeline"), circumplex = $("circumplex");
const bars = $("expressions");
const grab = document.createElement("canvas");  // the frame, at the video's size, encoded as JPEG
const IN_FLIGHT = 2;       // frames sent and not yet answered: more wait (the server drops nothing then)
const WINDOW_S = 30;       // seconds shown on the timeline (at most)
const state = window.mambava = {
  rows: [], sent: 0, dropped: 0, errors: [], drawn: 0, source: null, session: null, inFlight: 0,
  info: null, bars: null,
};
let socket = null, timer = null, t0 = 0, sourceStream = null;

// The server's token, when it has one: opened as /?token=..., kept for this tab (a reload keeps working) and
// taken out of the address bar; sent on the WebSocket as ?token= (a browser's WebSocket sends no headers).
const token = (() => {
  const params = new URLSearchParams(location.search);
  const given = params.get("token");
  if (given !== null) {
    sessionStorage.setItem("mambava-token", given);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  }
  return sessionStorage.getItem("mambava-token");
})();
state.token = token !== null;

function setStatus(text) { $("status").textContent = text; }
function showError(text) { $("error").textContent = text; state.errors.push(text); }

function connect(name) {
  return new Promise((resolve, reject) => {
    const auth = token === null ? "" : `&token=${encodeURIComponent(token)}`;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?name=${encodeURIComponent(name)}${auth}`;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.session !== undefined) { state.session = message; setStatus(`session ${message.session}`); resolve(ws); return; }
      if (message.error) {
        showError(message.error);
        if (message.frame !== undefined) state.inFlight = Math.max(0, state.inFlight - 1);
        if (state.session === null) reject(new Error(message.error));
        return;
      }
      received(message);
    };
    ws.onclose = (event) => {
      setStatus(`closed (${event.code})`);
      if (state.session === null) reject(new Error(token === null ? "refused (does this server need its token? open /?token=...)" : "refused"));
    };
    ws.onerror = () => setStatus("connection error");
  });
}

function received(message) {
  state.inFlight = Math.max(0, state.inFlight - 1);
  state.dropped = message.dropped_total;
  const track = message.tracks[0];
  const row = { frame: message.frame, time: message.time, dropped: message.dropped,
                valence: track ? track.valence : null, arousal: track ? track.arousal : null,
                face: track ? track.face : false, box: track ? track.box : null,
                landmarks: track && track.landmarks ? track.landmarks : null, pose: track && track.pose ? track.pose : null,
                expressions: track && track.expressions ? track.expressions : null };
  state.rows.push(row);
  $("rows").textContent = state.rows.length;
  $("dropped").textContent = state.dropped;
  if (row.valence !== null) {
    $("valence").textContent = row.valence.toFixed(3);
    $("arousal").textContent = row.arousal.toFixed(3);
  }
  const tr = document.createElement("tr");
  tr.innerHTML = `<td>${row.frame}</td><td>${row.time.toFixed(2)}</td><td>${fmt(row.valence)}</td>` +
                 `<td>${fmt(row.arousal)}</td><td>${row.face ? 1 : 0}</td>`;
  const body = $("latest");
  body.insertBefore(tr, body.firstChild);
  while (body.children.length > 8) body.removeChild(body.lastChild);
  draw();
}

function fmt(v) { return v === null ? "–" : v.toFixed(3); }

function sendFrame() {
  if (!socket || socket.readyState !== WebSocket.OPEN || video.readyState < 2 || !video.videoWidth) return;
  if (state.inFlight >= IN_FLIGHT) return;
  const time = state.source === "file" ? video.currentTime : (performance.now() - t0) / 1000;
  grab.width = video.videoWidth; grab.height = video.videoHeight;
  grab.getContext("2d").drawImage(video, 0, 0);
  state.inFlight += 1;
  grab.toBlob((blob) => {
    if (!blob || !socket || socket.readyState !== WebSocket.OPEN) { state.inFlight -= 1; return; }
    blob.arrayBuffer().then((buffer) => {
      socket.send(JSON.stringify({ time: time }));
      socket.send(buffer);
      state.sent += 1;
      $("sent").textContent = state.sent;
    });
  }, "image/jpeg", 0.85);
}

async function start(kind, name) {
  stop();
  $("error").textContent = "";
  state.rows = []; state.sent = 0; state.dropped = 0; state.session = null; state.inFlight = 0; state.source = kind;
  try {
    socket = await connect(name);
  } catch (error) { showError(String(error.message || error)); return; }
  t0 = performance.now();
  await video.play().catch(() => {});
  $("stop").disabled = false;
  const rate = Math.max(1, Math.min(30, Number($("rate").value) || 10));
  timer = setInterval(sendFrame, 1000 / rate);
}

function stop() {
  if (timer) clearInterval(timer);
  timer = null;
  if (socket) socket.close();
  socket = null;
  $("stop").disabled = true;
}

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (!file) return;
  if (sourceStream) { sourceStream.getTracks().forEach((t) => t.stop()); sourceStream = null; }
  video.srcObject = null;
  video.src = URL.createObjectURL(file);
  video.onended = () => setTimeout(stop, 500);
  video.onloadeddata = () => start("file", file.name.replace(/\.[^.]*$/, ""));
});

$("webcam").addEventListener("click", async () => {
  try {
    sourceStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (error) { showError(`webcam: ${error.message || error}`); return; }
  video.removeAttribute("src");
  video.srcObject = sourceStream;
  video.onloadeddata = null;
  await new Promise((resolve) => { if (video.readyState >= 2) resolve(); else video.onloadeddata = resolve; });
  start("webcam", "webcam");
});

$("stop").addEventListener("click", stop);
$("points").addEventListener("change", drawBox);

// ------------------------------------------------------------------ drawing

const COLORS = { valence: "#1f77b4", arousal: "#ff7f0e", box: "#00e676", points: "#ffeb3b" };

function draw() {
  drawBox(); drawTimeline(); drawCircumplex(); drawExpressions();
  state.drawn += 1;
}

function drawBox() {
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  const row = state.rows[state.rows.length - 1];
  if (!row || !row.box || !video.videoWidth) return;
  // the video is drawn "contain" in the stage: the same scale and offset for its boxes
  const scale = Math.min(overlay.width / video.videoWidth, overlay.height / video.videoHeight);
  const dx = (overlay.width - video.videoWidth * scale) / 2, dy = (overlay.height - video.videoHeight * scale) / 2;
  const [x1, y1, x2, y2] = row.box.map((v) => v * scale);
  ctx.strokeStyle = row.face ? COLORS.box : "#9e9e9e";
  ctx.lineWidth = 3;
  ctx.strokeRect(dx + x1, dy + y1, x2 - x1, y2 - y1);
  ctx.fillStyle = "rgba(0,0,0,0.6)";
  ctx.fillRect(dx + x1, dy + y1 - 20, 150, 20);
  ctx.fillStyle = "#fff";
  ctx.font = "13px system-ui, sans-serif";
  ctx.fillText(`V ${fmt(row.valence)}  A ${fmt(row.arousal)}`, dx + x1 + 4, dy + y1 - 5);
  drawPoints(ctx, row, scale, dx, dy);
}

// the face's 68 points (served with --landmarks dlib68), when the "68 points" box is ticked
function drawPoints(ctx, row, scale, dx, dy) {
  state.pointsDrawn = 0;
  if (!$("points").checked || !row.landmarks) return;
  ctx.fillStyle = COLORS.points;
  for (const [x, y] of row.landmarks) {
    ctx.beginPath(); ctx.arc(dx + x * scale, dy + y * scale, 2, 0, 2 * Math.PI); ctx.fill();
  }
  state.pointsDrawn = row.landmarks.length;
}

function drawTimeline() {
  const ctx = timeline.getContext("2d"), w = timeline.width, h = timeline.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#ddd"; ctx.lineWidth = 1;
  const y = (v) => pad / 2 + (1 - (v + 1) / 2) * (h - pad);
  ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#666";
  for (const v of [-1, -0.5, 0, 0.5, 1]) {
    ctx.beginPath(); ctx.moveTo(pad, y(v)); ctx.lineTo(w - 4, y(v)); ctx.stroke();
    ctx.fillText(v.toFixed(1), 2, y(v) + 4);
  }
  const rows = state.rows.filter((r) => r.valence !== null);
  if (!rows.length) return;
  // the last WINDOW_S seconds; a shorter stream fills the width from its first row (at least 5 s shown)
  const first = rows[0].time, last = rows[rows.length - 1].time;
  const span = Math.min(WINDOW_S, Math.max(5, last - first)), end = Math.max(last, first + span), begin = end - span;
  const x = (t) => pad + ((t - begin) / span) * (w - pad - 4);
  for (const key of ["valence", "arousal"]) {
    ctx.strokeStyle = COLORS[key]; ctx.lineWidth = 2; ctx.beginPath();
    let first = true;
    for (const r of rows) {
      if (r.time < begin) continue;
      if (first) { ctx.moveTo(x(r.time), y(r[key])); first = false; } else ctx.lineTo(x(r.time), y(r[key]));
    }
    ctx.stroke();
  }
  ctx.fillStyle = COLORS.valence; ctx.fillText("valence", w - 110, 12);
  ctx.fillStyle = COLORS.arousal; ctx.fillText("arousal", w - 55, 12);
  ctx.fillStyle = "#666"; ctx.fillText(`${end.toFixed(1)} s`, w - 40, h - 2);
}

function drawExpressions() {
  // the latest row's seven probabilities as horizontal bars; the names come from /info (the server's order)
  const ctx = bars.getContext("2d"), w = bars.width, h = bars.height;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  const names = state.info && state.info.expressions;
  if (!names) {
    ctx.fillStyle = "#666";
    ctx.fillText("no expressions from this server (--expressions)", 6, 16);
    return;
  }
  let latest = null;
  for (let i = state.rows.length - 1; i >= 0 && !latest; i--) if (state.rows[i].expressions) latest = state.rows[i];
  const step = (h - 8) / names.length, left = 70, right = w - 46;
  names.forEach((name, i) => {
    const y = 4 + i * step, p = latest ? latest.expressions[name] : 0;
    ctx.fillStyle = "#444"; ctx.textAlign = "right"; ctx.fillText(name, left - 6, y + step * 0.7);
    ctx.fillStyle = "#eee"; ctx.fillRect(left, y + 2, right - left, step - 4);
    ctx.fillStyle = "#2ca02c"; ctx.fillRect(left, y + 2, (right - left) * p, step - 4);
    ctx.fillStyle = "#444"; ctx.textAlign = "left"; ctx.fillText(latest ? p.toFixed(2) : "–", right + 4, y + step * 0.7);
  });
  ctx.textAlign = "left";
  state.bars = latest ? Object.assign({}, latest.expressions) : null;
}

function drawCircumplex() {
  const ctx = circumplex.getContext("2d"), w = circumplex.width, c = w / 2, r = w / 2 - 26;
  ctx.clearRect(0, 0, w, w);
  ctx.strokeStyle = "#ccc"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.arc(c, c, r, 0, 2 * Math.PI); ctx.stroke();
  ctx.beginPath(); ctx.moveTo(c - r, c); ctx.lineTo(c + r, c); ctx.moveTo(c, c - r); ctx.lineTo(c, c + r); ctx.stroke();
  ctx.fillStyle = "#666"; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "center";
  ctx.fillText("aroused", c, 12); ctx.fillText("calm", c, w - 4);
  ctx.textAlign = "left"; ctx.fillText("unpleasant", 2, c - 6);
  ctx.textAlign = "right"; ctx.fillText("pleasant", w - 2, c - 6);
  ctx.textAlign = "left";
  const rows = state.rows.filter((q) => q.valence !== null).slice(-40);
  const px = (q) => [c + q.valence * r, c - q.arousal * r];
  rows.forEach((q, i) => {
    const [x, y] = px(q);
    ctx.fillStyle = `rgba(31,119,180,${0.1 + 0.5 * i / rows.length})`;
    ctx.beginPath(); ctx.arc(x, y, 3, 0, 2 * Math.PI); ctx.fill();
  });
  if (rows.length) {
    const [x, y] = px(rows[rows.length - 1]);
    state.point = { x: x, y: y };
    ctx.fillStyle = "#d62728"; ctx.beginPath(); ctx.arc(x, y, 7, 0, 2 * Math.PI); ctx.fill();
  }
}

// the model's name and the expressions' names (the bars); /info needs the token where the server has one
fetch("info", { headers: token === null ? {} : { Authorization: `Bearer ${token}` } })
  .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`/info: ${r.status}`)))).then((info) => {
  state.info = info;
  $("model").textContent = info.model;
  draw();
}).catch(() => {});
draw();
