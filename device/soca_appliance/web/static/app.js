// The kiosk screen: draws the appliance's event feed (/events, Server-Sent Events) and
// sends the two on-screen buttons to /api/stop and /api/mute (the button's code path).
"use strict";

const TEXT = {
  en: {
    connecting: "Connecting…", ready: "Ready", listening: "Listening…",
    thinking: "Thinking…", speaking: "Speaking", error: "Out of order", stopped: "Stopped",
    stop: "Stop", mute: "Mute mic", unmute: "Unmute mic", muted: "Mic off",
    you: "You", agent: "Assistant", hint: "Just talk: say something to start.",
    holdToTalk: "Hold to talk", hintPtt: "Hold the button while you talk.",
    hintMuted: "The microphone is off: press Unmute mic to talk.",
    offline: "Offline: the assistant cannot be reached. Reconnecting…",
    unreachable: "The kiosk is not responding. Please wait…",
    errorPrefix: "Out of order: ", errorGeneric: "please ask the staff for help",
    fault: { auth: "the assistant refused this kiosk", mic: "the microphone is not working",
             speaker: "the speaker is not working" },
  },
  id: {
    connecting: "Menghubungkan…", ready: "Siap", listening: "Mendengarkan…",
    thinking: "Berpikir…", speaking: "Berbicara", error: "Sedang gangguan", stopped: "Berhenti",
    stop: "Berhenti", mute: "Matikan mik", unmute: "Nyalakan mik", muted: "Mik mati",
    you: "Anda", agent: "Asisten", hint: "Silakan bicara: ucapkan sesuatu untuk memulai.",
    holdToTalk: "Tahan untuk bicara", hintPtt: "Tekan dan tahan tombol selama berbicara.",
    hintMuted: "Mikrofon mati: tekan Nyalakan mik untuk bicara.",
    offline: "Tidak terhubung: asisten tidak dapat dijangkau. Menghubungkan ulang…",
    unreachable: "Kios tidak merespons. Mohon tunggu…",
    errorPrefix: "Sedang gangguan: ", errorGeneric: "silakan hubungi petugas",
    fault: { auth: "asisten menolak kios ini", mic: "mikrofon tidak berfungsi",
             speaker: "pengeras suara tidak berfungsi" },
  },
};
const MAX_MESSAGES = 30;
const UNREACHABLE_AFTER_MS = 1500;

const lang = document.documentElement.lang === "en" ? "en" : "id";
const T = TEXT[lang];
const $ = (id) => document.getElementById(id);
const ui = { state: "connecting", connected: false, muted: false, faults: [], live: false,
             ptt: false };   // ptt: button_mode "push_to_talk" (from /api/status)
let userEl = null;        // the user's turn being transcribed (partial until final)
let agentEl = null;       // the agent's answer being spoken
let agentSeq = null;
let downSince = Date.now();
let source = null;

function bubble(kind) {
  $("hint").hidden = true;
  const el = document.createElement("div");
  el.className = "msg " + kind;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = kind === "user" ? T.you : T.agent;
  const text = document.createElement("span");
  text.className = "text";
  el.append(who, text);
  const conv = $("conv");
  conv.append(el);
  const all = conv.querySelectorAll(".msg");
  for (let i = 0; i < all.length - MAX_MESSAGES; i++) all[i].remove();
  return el;
}

function scrollDown() {
  const conv = $("conv");
  conv.scrollTop = conv.scrollHeight;
}

function onTranscript(e) {
  const text = String(e.text || "");
  if (!text.trim()) return;
  if (!userEl) {
    userEl = bubble("user");
    agentEl = null;
  }
  userEl.querySelector(".text").textContent = text;
  userEl.classList.toggle("partial", !e.final);
  if (e.final) userEl = null;
  scrollDown();
}

function onSentence(e) {
  if (!agentEl || agentSeq !== e.seq) {
    agentEl = bubble("agent");
    agentSeq = e.seq;
    agentEl.dataset.seq = String(e.seq);
  }
  const text = String(e.text || "").trim();
  if (text) {
    const span = agentEl.querySelector(".text");
    const sentence = document.createElement("span");
    sentence.className = "sentence";
    sentence.textContent = (span.childElementCount ? " " : "") + text;
    span.append(sentence);
  }
  scrollDown();
}

function onBarge(e) {
  if (agentEl && (e.seq === undefined || e.seq === agentSeq)) {
    agentEl.classList.add("interrupted");
  }
  agentEl = null;
}

function handle(e) {
  switch (e.event) {
    case "state":
      ui.state = e.state;
      if (e.state === "error") refreshFaults();
      else ui.faults = [];
      break;
    case "connected": ui.connected = true; break;
    case "disconnected": ui.connected = false; break;
    case "mute": ui.muted = !!e.muted; break;
    case "transcript": onTranscript(e); break;
    case "sentence.play": onSentence(e); break;
    case "barge": onBarge(e); break;
    case "mic.recovered": refreshFaults(); break;
    default: break;
  }
  render();
}

function reset(snap) {
  for (const el of $("conv").querySelectorAll(".msg")) el.remove();
  $("hint").hidden = false;
  userEl = agentEl = null;
  agentSeq = null;
  ui.state = snap.state;
  ui.connected = !!snap.connected;
  ui.muted = !!snap.muted;
  ui.faults = snap.faults || [];
  render();
  refreshFaults();          // (also says the button's mode)
}

function refreshFaults() {
  fetch("/api/status", { cache: "no-store", credentials: "same-origin" })
    .then((r) => (r.ok ? r.json() : null))
    .then((s) => {
      if (s) { ui.faults = s.faults || []; ui.ptt = s.button_mode === "push_to_talk"; render(); }
    })
    .catch(() => {});
}

function render() {
  const pill = $("state");
  pill.dataset.state = ui.state;
  const hold = ui.ptt && ui.state === "ready" && !ui.muted;
  pill.textContent = hold ? T.holdToTalk : (T[ui.state] || ui.state);
  pill.classList.toggle("hold", hold);
  $("muted-badge").hidden = !ui.muted;
  $("hint").textContent = ui.muted ? T.hintMuted : (ui.ptt ? T.hintPtt : T.hint);
  const mute = $("mute");
  mute.textContent = ui.muted ? T.unmute : T.mute;
  mute.setAttribute("aria-pressed", ui.muted ? "true" : "false");
  let kind = "", text = "";
  if (!ui.live && Date.now() - downSince >= UNREACHABLE_AFTER_MS) {
    kind = "unreachable"; text = T.unreachable;
  } else if (ui.live && ui.state === "error") {
    kind = "error";
    const why = ui.faults.map((f) => T.fault[f] || f).join(", ");
    text = T.errorPrefix + (why || T.errorGeneric);
  } else if (ui.live && ui.state === "connecting") {
    kind = "offline"; text = T.offline;
  }
  const banner = $("banner");
  banner.hidden = !kind;
  banner.dataset.kind = kind;
  $("banner-text").textContent = text;
}

function post(path, body) {
  return fetch(path, {
    method: "POST", credentials: "same-origin", cache: "no-store",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  }).then((r) => r.json()).catch(() => null);
}

function connect() {
  if (source) source.close();
  source = new EventSource("/events");
  source.addEventListener("snapshot", (m) => {
    ui.live = true;
    reset(JSON.parse(m.data));
  });
  source.addEventListener("event", (m) => {
    try { handle(JSON.parse(m.data)); } catch (err) { /* a bad line is skipped */ }
  });
  source.onerror = () => {
    if (ui.live) downSince = Date.now();
    ui.live = false;
    render();
    // A refused connection retries by itself; a failed response closes the stream.
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
  };
}

$("stop").textContent = T.stop;
$("muted-badge").textContent = T.muted;
$("stop").addEventListener("click", () => post("/api/stop", {}));
$("mute").addEventListener("click", () => post("/api/mute", { muted: !ui.muted })
  .then((r) => { if (r && r.ok) { ui.muted = r.muted; render(); } }));
document.addEventListener("contextmenu", (e) => e.preventDefault());
setInterval(render, 500);     // the "not responding" banner needs time to pass, not events
render();
connect();
