// Web client for the session server: microphone -> ws://HOST/ws/{id} -> speakers.
// Plain ES module, no build step. Protocol: /work/shared/DESIGN.md "Session protocol".
//
// Audio in:  getUserMedia -> capture-worklet (16 kHz int16, 20 ms frames) -> binary frames.
// Audio out: binary float32 LE 24 kHz frames -> playback-worklet (ring buffer) -> speakers.
// Binary frames carry no turn id: they belong to the latest turn that sent
// `transcript` or `response_text`.

const OUT_RATE = 24000;
const IN_RATE = 16000;
const ACK_EVERY_MS = 200;

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $("conn"),
  agent: $("agent"),
  agentDesc: $("agent-desc"),
  voice: $("voice"),
  credential: $("credential"),
  connect: $("connect"),
  mute: $("mute"),
  stop: $("stop"),
  level: $("level"),
  activity: $("activity"),
  log: $("log"),
  typed: $("typed"),
  text: $("text"),
  send: $("send"),
  latency: $("latency"),
  audioStats: $("audio-stats"),
};

// Everything a test (or a curious person in the console) may want to read.
const stats = {
  contextRate: null, // the AudioContext's rate (the page's natural one)
  inRate: IN_RATE,
  outRate: OUT_RATE,
  sentFrames: 0, // 20 ms microphone frames sent
  sentSamples: 0,
  receivedSamples: 0, // 24 kHz samples received from the server
  playedSamples: 0, // 24 kHz samples the playback worklet actually played
  bufferedSamples: 0,
  droppedSamples: 0, // cut by an interruption
  underruns: 0, // playback ran dry before a turn's audio ended
  acksSent: 0,
};
const client = {
  stats,
  state: "idle", // idle | connecting | ready | closed | error
  sessionId: null,
  agents: [],
  latencies: [], // spoken turns: server-measured end of speech -> first audio sent (ms)
  typedLatencies: [], // typed turns: message received -> first audio sent (ms)
  events: [], // last server messages (JSON), for debugging
  connect: () => connect(),
  disconnect: () => disconnect(),
  say: (text) => sendText(text),
};
window.voiceClient = client;

let ws = null;
let ctx = null;
let player = null;
let capture = null;
let mic = null;
let micSource = null;
let muted = false;
let audioTurn = 0; // turn of incoming binary frames
let dropUpTo = 0; // audio of turns <= this was interrupted: drop late frames
let leftover = null; // odd bytes of a binary frame not a multiple of 4
let lastAck = 0;
let playingTurn = null;
let turnPlayed = {}; // turn -> 24 kHz samples played (from the worklet)
const cut = new Set(); // interrupted turns: no more acks for them
const turns = new Map(); // turn id -> {li, user, assistant, meta}
let pendingUser = null; // bubble for speech whose transcript has not come yet
let pendingTimer = 0;
const typed = []; // texts sent as typed input, not yet echoed back as a transcript
// A dropped connection (a mobile network, a Wi-Fi hand-over) is resumed: the server keeps the
// session for resume_window_s; we reconnect with its token and the number of frames we got.
let resume = null; // {token, window} from the newest call_ready
let framesIn = 0; // frames received after call_ready, on every connection of this session
let reconnecting = null; // {attempt, since} while we try to get the session back
const heldMic = []; // microphone frames captured while the connection was down (sent on return)
const HELD_MIC_MAX = 500; // 10 s of 20 ms frames

// ------------------------------------------------------------------ small helpers

function randomId(bytes = 12) {
  const a = crypto.getRandomValues(new Uint8Array(bytes)); // works outside secure contexts too
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function userId() {
  let id = localStorage.getItem("voice.userId");
  if (!id) {
    id = "web-" + randomId(8);
    localStorage.setItem("voice.userId", id);
  }
  return id;
}

function setConn(state, text) {
  client.state = state;
  ui.conn.dataset.state = state;
  ui.conn.textContent = text || { idle: "disconnected", connecting: "connecting…", ready: "connected", closed: "disconnected", error: "error" }[state];
  const live = state === "connecting" || state === "ready";
  ui.connect.textContent = live ? "Hang up" : "Connect";
  ui.connect.classList.toggle("hangup", live);
  ui.agent.disabled = live;
  ui.mute.disabled = state !== "ready" || !mic;
  ui.text.disabled = ui.send.disabled = state !== "ready";
  if (state !== "ready") ui.stop.disabled = true;
}

function setActivity(state, text) {
  ui.activity.dataset.state = state;
  ui.activity.textContent = text;
}

function scrollDown() {
  ui.log.scrollTop = ui.log.scrollHeight;
}

function note(text, kind = "error") {
  const li = document.createElement("li");
  li.className = `system ${kind}`;
  li.textContent = text;
  ui.log.append(li);
  scrollDown();
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

// A turn in the log: the user's words, the assistant's reply, and its latency.
function turnView(id, spoken = true) {
  let t = turns.get(id);
  if (t) return t;
  const li = el("li", "turn");
  li.dataset.turn = id;
  let user;
  if (pendingUser && spoken) {
    user = pendingUser; // the bubble shown while the user spoke becomes this turn's
    pendingUser = null;
    user.parentElement.remove();
  } else {
    user = el("div", "bubble user");
  }
  user.dataset.role = "user";
  const assistant = el("div", "bubble assistant");
  assistant.dataset.role = "assistant";
  const meta = el("div", "meta");
  li.append(user, assistant, meta);
  ui.log.append(li);
  t = { li, user, assistant, meta, text: "", typed: !spoken };
  turns.set(id, t);
  scrollDown();
  return t;
}

function dropPendingUser() {
  clearTimeout(pendingTimer);
  pendingUser?.parentElement?.remove();
  pendingUser = null;
}

function showPendingUser(text) {
  clearTimeout(pendingTimer);
  if (!pendingUser) {
    const li = el("li", "turn");
    pendingUser = el("div", "bubble user pending");
    li.append(pendingUser);
    ui.log.append(li);
  }
  pendingUser.textContent = text;
  scrollDown();
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function showLatency() {
  const xs = client.latencies;
  const ys = client.typedLatencies;
  let text = "Latency (end of speech → first audio, server): ";
  if (xs.length) {
    text += `last ${Math.round(xs[xs.length - 1])} ms · median ${Math.round(median(xs))} ms over ${xs.length} turn${xs.length > 1 ? "s" : ""}`;
  } else {
    text += "—";
  }
  if (ys.length) text += ` · typed: median ${Math.round(median(ys))} ms`;
  ui.latency.textContent = text;
}

function showAudioStats() {
  const s = (n) => (n / OUT_RATE).toFixed(1);
  ui.audioStats.textContent =
    `mic ${stats.contextRate ? stats.contextRate + " Hz" : "—"} · played ${s(stats.playedSamples)} s of ${s(stats.receivedSamples)} s` +
    (stats.underruns ? ` · ${stats.underruns} gaps` : "");
}

// ------------------------------------------------------------------ agents

// ------------------------------------------------------------------ credentials
// An API key is sent as a header on HTTP and traded for a single-use session token for
// the WebSocket (browsers cannot set headers there). A session token minted by your own
// backend (POST /v1/session-tokens) can be pasted instead: it names its session id.

function credential() {
  const value = ui.credential.value.trim();
  sessionStorage.setItem("voice.credential", value);
  return value;
}

function tokenSession(value) {
  const [payload, sig] = value.split(".");
  if (!payload || !sig || value.length < 40) return null;
  try {
    return JSON.parse(atob(payload.replace(/-/g, "+").replace(/_/g, "/"))).sid || null;
  } catch {
    return null;
  }
}

function authHeaders() {
  const value = credential();
  return value && !tokenSession(value) ? { Authorization: `Bearer ${value}` } : {};
}

// The WebSocket address for a new session, or for `sid` again (a resume): [session id, url].
async function sessionAddress(sid = null) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const base = `${proto}//${location.host}/ws/`;
  const value = credential();
  const pasted = tokenSession(value);
  if (pasted) return [pasted, `${base}${pasted}?token=${encodeURIComponent(value)}`]; // single-use: a resume needs a new one
  const id = sid || randomId();
  if (!value) return [id, base + id];
  const r = await fetch("/v1/session-tokens", {
    method: "POST",
    headers: { ...authHeaders(), "Content-Type": "application/json" },
    body: JSON.stringify({ session_id: id }),
  });
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || `HTTP ${r.status}`);
  return [id, `${base}${id}?token=${encodeURIComponent((await r.json()).token)}`];
}

async function loadVoices() {
  try {
    const r = await fetch("/voices", { headers: authHeaders() });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    for (const v of await r.json()) {
      const o = el("option", null, `${v.name || v.id} (${v.engine}, ${v.language})`);
      o.value = v.id;
      ui.voice.append(o);
    }
  } catch (e) {
    note(`could not list voices (${e.message}); the agent's voice is used`, "info");
  }
}

async function loadAgents() {
  try {
    const r = await fetch("/agents", { headers: authHeaders() });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    client.agents = await r.json();
  } catch (e) {
    client.agents = [];
    note(`could not list agents (${e.message}); using the server's default`, "info");
  }
  ui.agent.replaceChildren();
  for (const a of client.agents) {
    const o = el("option", null, a.name || a.id);
    o.value = a.id;
    ui.agent.append(o);
  }
  if (!client.agents.length) {
    const o = el("option", null, "default");
    o.value = "default";
    ui.agent.append(o);
  }
  const saved = localStorage.getItem("voice.agent");
  if (saved && client.agents.some((a) => a.id === saved)) ui.agent.value = saved;
  showAgent();
}

function currentAgent() {
  return client.agents.find((a) => a.id === ui.agent.value) || { id: ui.agent.value || "default", name: "Assistant" };
}

function showAgent() {
  const a = currentAgent();
  ui.agentDesc.textContent = a.systemPrompt || "";
  ui.voice.options[0].textContent = a.voice ? `agent default (${a.voice})` : "agent default";
}

// ------------------------------------------------------------------ connection

async function connect() {
  if (ws) return;
  if (!window.isSecureContext || !window.AudioWorkletNode) {
    setConn("error", "needs https");
    note("Audio needs a secure page: open it over https or as http://localhost (browsers block the microphone and AudioWorklet elsewhere).");
    return;
  }
  setConn("connecting");
  setActivity("idle", "Connecting…");
  // created in the click handler: browsers only start audio after a user gesture
  ctx = new AudioContext({ latencyHint: "interactive" });
  const resumed = ctx.resume();
  stats.contextRate = ctx.sampleRate;
  try {
    await Promise.all([
      ctx.audioWorklet.addModule(new URL("./playback-worklet.js", import.meta.url)),
      ctx.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url)),
      resumed,
    ]);
  } catch (e) {
    note(`audio setup failed: ${e.message}`);
    teardown("error");
    return;
  }
  player = new AudioWorkletNode(ctx, "playback-processor", { numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1] });
  player.port.onmessage = (e) => onPlayer(e.data);
  player.connect(ctx.destination);
  await openSocket();
}

// Turn ids start at 1 again in every session.
function resetSession() {
  audioTurn = 0;
  dropUpTo = 0;
  leftover = null;
  lastAck = 0;
  playingTurn = null;
  turnPlayed = {};
  cut.clear();
  turns.clear();
  typed.length = 0;
  client.latencies = [];
  client.typedLatencies = [];
  client.events = [];
  for (const k of ["sentFrames", "sentSamples", "receivedSamples", "playedSamples", "bufferedSamples", "droppedSamples", "underruns", "acksSent"]) stats[k] = 0;
  showLatency();
  showAudioStats();
  if (ui.log.children.length) note(`new call with ${currentAgent().name || currentAgent().id}`, "info");
}

async function openSocket(resuming = false) {
  if (!resuming) {
    resetSession();
    resume = null;
  }
  const agent = currentAgent();
  localStorage.setItem("voice.agent", agent.id);
  let url;
  try {
    [client.sessionId, url] = await sessionAddress(resuming ? client.sessionId : null);
  } catch (e) {
    if (resuming) return retryLater();
    note(`not allowed to connect: ${e.message}`);
    teardown("error");
    return;
  }
  const sock = new WebSocket(url);
  sock.binaryType = "arraybuffer";
  ws = sock;
  sock.onopen = () => {
    const init = { agentId: agent.id, userId: userId(), agentName: agent.name || "Assistant", audioOut: "binary" };
    const voice = ui.voice.value.trim();
    if (voice) init.voice = voice;
    if (resuming && resume) init.resume = { token: resume.token, received: framesIn };
    sock.send(JSON.stringify(init));
  };
  sock.onmessage = (e) => {
    if (sock !== ws) return;
    if (typeof e.data === "string") {
      let m;
      try {
        m = JSON.parse(e.data);
      } catch {
        return;
      }
      if (m.type !== "call_ready" && m.type !== "queued") framesIn += 1;
      onMessage(m);
    } else {
      framesIn += 1;
      onAudio(e.data);
    }
  };
  sock.onerror = () => {
    if (sock === ws && client.state === "connecting") note("could not reach the session server");
  };
  sock.onclose = (e) => {
    if (sock !== ws) return;
    if (e.code === 1006 && resume && (client.state === "ready" || reconnecting)) return retryLater(); // dropped, not closed
    const why = e.reason ? `: ${e.reason}` : e.code !== 1000 && e.code !== 1005 ? ` (code ${e.code})` : "";
    if (client.state === "ready" || why) note(`connection closed${why}`, e.code === 1000 ? "info" : "error");
    teardown(e.code === 1000 || e.code === 1005 ? "closed" : "error");
  };
}

// Reconnect with backoff (0.25, 0.5, 1, 2 s...) until the server's resume window is over.
function retryLater() {
  ws = null;
  reconnecting = reconnecting || { attempt: 0, since: performance.now() };
  const waited = (performance.now() - reconnecting.since) / 1000;
  if (!resume || waited > resume.window) {
    reconnecting = null;
    note("the connection dropped and could not be resumed in time");
    teardown("error");
    return;
  }
  setConn("connecting", "reconnecting…");
  const delay = Math.min(2000, 250 * 2 ** reconnecting.attempt++);
  setTimeout(() => { if (client.state === "connecting" && reconnecting) openSocket(true); }, delay);
}

function disconnect() {
  reconnecting = null;
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "hang up");
  teardown("closed");
}

function teardown(state) {
  const sock = ws;
  reconnecting = null;
  resume = null;
  heldMic.length = 0;
  ws = null;
  if (sock && sock.readyState <= WebSocket.OPEN) sock.close(1000);
  if (mic) for (const t of mic.getTracks()) t.stop();
  mic = null;
  micSource = null;
  capture = null;
  player = null;
  if (ctx) ctx.close().catch(() => {});
  ctx = null;
  dropPendingUser();
  typed.length = 0;
  muted = false;
  ui.mute.setAttribute("aria-pressed", "false");
  ui.mute.textContent = "Mute";
  ui.level.style.width = "0";
  setConn(state);
  setActivity("idle", "Press Connect to talk again.");
}

async function startMic() {
  try {
    mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
  } catch (e) {
    note(`microphone unavailable (${e.name}: ${e.message}); you can still type`);
    setActivity("idle", "No microphone: type a message below.");
    return;
  }
  if (!ctx || !ws) {
    for (const t of mic.getTracks()) t.stop();
    mic = null;
    return;
  }
  micSource = ctx.createMediaStreamSource(mic);
  capture = new AudioWorkletNode(ctx, "capture-processor", { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
  capture.port.onmessage = (e) => onFrame(e.data);
  micSource.connect(capture);
  capture.connect(ctx.destination); // silent; keeps the node pulled by the graph
  ui.mute.disabled = false;
  setActivity("listening", "Listening — say something.");
}

function onFrame(m) {
  if (m.type !== "frame") return;
  const db = m.rms > 0 ? 20 * Math.log10(m.rms) : -100;
  ui.level.style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
  if (ws && ws.readyState === WebSocket.OPEN && client.state === "ready") {
    ws.send(m.pcm); // a muted track yields silence, so the detector still sees the pause
    stats.sentFrames += 1;
    stats.sentSamples += m.pcm.byteLength / 2;
  } else if (reconnecting && heldMic.length < HELD_MIC_MAX) {
    heldMic.push(m.pcm); // what the user says while we are away reaches the server on return
  }
}

function toggleMute() {
  if (!mic) return;
  muted = !muted;
  for (const t of mic.getAudioTracks()) t.enabled = !muted;
  ui.mute.setAttribute("aria-pressed", String(muted));
  ui.mute.textContent = muted ? "Unmute" : "Mute";
  if (client.state === "ready") setActivity(muted ? "idle" : "listening", muted ? "Muted — the assistant cannot hear you." : "Listening — say something.");
}

function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

function sendText(text) {
  text = (text || "").trim();
  if (!text || client.state !== "ready") return false;
  stopPlayback(false); // the server interrupts its reply for typed input too
  send({ type: "transcript", text });
  typed.push(text);
  setActivity("thinking", "Thinking…");
  return true;
}

// ------------------------------------------------------------------ server -> client

function onMessage(m) {
  client.events.push(m);
  if (client.events.length > 200) client.events.shift();
  switch (m.type) {
    case "call_ready":
      resume = m.resume_token ? { token: m.resume_token, window: m.resume_window_s } : null;
      setConn("ready");
      if (m.resumed) {
        reconnecting = null;
        note("reconnected: the conversation goes on", "info");
        for (const pcm of heldMic.splice(0)) ws.send(pcm);
      } else {
        framesIn = 0;
        startMic();
      }
      break;
    case "queued":
      // the server is full: we wait for a place (the microphone starts on call_ready)
      setConn("connecting", `queued: #${m.position}, about ${Math.ceil(m.estimated_wait_s)} s`);
      break;
    case "tool_call":
      onToolCall(m);
      break;
    case "speech_start":
      showPendingUser("…");
      setActivity("user", "You're speaking…");
      break;
    case "speech_end":
      if (pendingUser) {
        pendingUser.textContent = "… (transcribing)";
        // no transcript for it (noise, a cough): the server drops it silently
        pendingTimer = setTimeout(dropPendingUser, 20000);
      }
      if (ui.activity.dataset.state === "user") setActivity("thinking", "Thinking…");
      break;
    case "transcript_partial": {
      // live captions: the stable part will not change, the rest may
      if (turns.has(m.turn_id)) break;
      showPendingUser(m.text);
      pendingUser.dataset.stable = m.stable;
      break;
    }
    case "transcript": {
      if (m.replaces != null && turns.has(m.replaces)) {
        // the user had not finished: this turn repeats and extends that one's words
        turns.get(m.replaces).li.remove();
        turns.delete(m.replaces);
      }
      audioTurn = Math.max(audioTurn, m.turn_id);
      const i = turns.has(m.turn_id) ? -1 : typed.indexOf(m.text.trim());
      if (i >= 0) typed.splice(i, 1);
      const t = turnView(m.turn_id, i < 0);
      t.user.classList.remove("pending");
      t.user.textContent = m.text;
      scrollDown();
      break;
    }
    case "response_text": {
      audioTurn = Math.max(audioTurn, m.turn_id);
      const t = turnView(m.turn_id);
      t.text += m.text;
      t.assistant.textContent = t.text.trimStart();
      scrollDown();
      break;
    }
    case "metrics":
      showMetrics(m);
      break;
    case "interrupted":
      onInterrupted(m.turn_id, m.played_ms);
      break;
    case "resumed":
      onResumed(m.turn_id);
      break;
    case "tts_stream_end":
      player?.port.postMessage({ type: "end", turn: m.turn_id });
      break;
    case "error":
      note(`${m.code}: ${m.message}`, m.recoverable === false ? "error" : "info");
      if (m.recoverable === false) ui.conn.dataset.state = "error"; // the server closes the socket next
      break;
    default:
      break;
  }
}

// Client-side tools: the agent asks this page for something only it knows.
const pageTools = {
  get_user_time: () => ({ time: new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }), timezone: Intl.DateTimeFormat().resolvedOptions().timeZone }),
};

function onToolCall(m) {
  const tool = pageTools[m.name];
  if (!tool) {
    send({ type: "tool_result", call_id: m.call_id, error: `this page has no tool ${m.name}` });
    return;
  }
  try {
    send({ type: "tool_result", call_id: m.call_id, content: JSON.stringify(tool(m.arguments)) });
  } catch (e) {
    send({ type: "tool_result", call_id: m.call_id, error: String(e.message || e) });
  }
}

function onAudio(buf) {
  let bytes = new Uint8Array(buf);
  if (leftover) {
    const joined = new Uint8Array(leftover.length + bytes.length);
    joined.set(leftover);
    joined.set(bytes, leftover.length);
    bytes = joined;
    leftover = null;
  }
  const whole = bytes.length - (bytes.length % 4);
  if (whole < bytes.length) leftover = bytes.slice(whole);
  if (whole === 0 || audioTurn <= dropUpTo || !player) return; // nothing whole, or late audio of an interrupted turn
  const samples = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + whole)); // f32 LE (every browser CPU is LE)
  stats.receivedSamples += samples.length;
  player.port.postMessage({ type: "push", turn: audioTurn, samples }, [samples.buffer]);
}

function showMetrics(m) {
  const t = turnView(m.turn_id);
  const st = m.stages || {};
  t.meta.replaceChildren();
  if (typeof st.first_audio_sent === "number") {
    (t.typed ? client.typedLatencies : client.latencies).push(st.first_audio_sent);
    t.meta.append(el("span", "ms", `${Math.round(st.first_audio_sent)} ms`), t.typed ? " message → first audio " : " end of speech → first audio ");
    showLatency();
  } else {
    t.meta.append("no audio for this turn ");
  }
  const d = el("details");
  d.append(el("summary", null, "stages"));
  d.title = "per-stage timings reported by the server";
  const list = Object.entries(st)
    .sort((a, b) => a[1] - b[1])
    .map(([k, v]) => `${k.replaceAll("_", " ")} ${Math.round(v)}`)
    .join(" · ");
  d.append(el("span", "stages", `${list} (ms since ${t.typed ? "the message arrived" : "end of speech"})`));
  t.meta.append(d);
}

function onInterrupted(turnId, playedMs) {
  cut.add(turnId);
  dropUpTo = Math.max(dropUpTo, turnId);
  player?.port.postMessage({ type: "clear" });
  const t = turns.get(turnId);
  if (t && !t.assistant.classList.contains("interrupted")) {
    t.assistant.classList.add("interrupted");
    t.assistant.append(el("span", "cut", ` — interrupted after ${(playedMs / 1000).toFixed(1)} s`));
  }
}

// The speech over the reply was not the user's words (mhm, a cough, our echo): the server sends
// the rest of the turn again from where we stopped; play it.
function onResumed(turnId) {
  cut.delete(turnId);
  if (dropUpTo === turnId) dropUpTo = turnId - 1;
  const t = turns.get(turnId);
  if (t) {
    t.assistant.classList.remove("interrupted");
    t.assistant.querySelector(".cut")?.remove();
  }
}

// The user stops the reply (Stop button, or typed input): tell the server what was heard.
function stopPlayback(notify) {
  if (playingTurn != null && !cut.has(playingTurn)) ack(playingTurn, turnPlayed[playingTurn] || 0, true);
  if (notify) send({ type: "interrupt" });
  if (playingTurn != null) {
    cut.add(playingTurn);
    dropUpTo = Math.max(dropUpTo, audioTurn);
  }
  player?.port.postMessage({ type: "clear" });
}

// ------------------------------------------------------------------ playback worklet -> client

function ack(turn, samples, force = false) {
  const now = performance.now();
  if (!force && now - lastAck < ACK_EVERY_MS) return;
  lastAck = now;
  send({ type: "playback", turn_id: turn, played_ms: Math.round((samples / OUT_RATE) * 10000) / 10 });
  stats.acksSent += 1;
}

function onPlayer(m) {
  if (m.type === "stats") {
    stats.playedSamples = m.played;
    stats.bufferedSamples = m.buffered;
    stats.underruns = m.underruns;
    stats.droppedSamples = m.dropped;
    turnPlayed = m.turns;
    playingTurn = m.turn;
    if (m.turn != null && !cut.has(m.turn)) ack(m.turn, m.turns[m.turn] || 0);
    const speaking = m.buffered > 0;
    ui.stop.disabled = !speaking;
    if (speaking) setActivity("speaking", "Assistant speaking — talk to interrupt.");
    else if (client.state === "ready" && ui.activity.dataset.state === "speaking") setActivity(muted ? "idle" : "listening", muted ? "Muted." : "Listening.");
    showAudioStats();
  } else if (m.type === "turn_done") {
    if (!cut.has(m.turn)) ack(m.turn, m.played, true); // the final ack: all of it was played
  } else if (m.type === "cleared") {
    turnPlayed = m.turns;
  }
}

// ------------------------------------------------------------------ wiring

ui.connect.addEventListener("click", () => (ws ? disconnect() : connect()));
ui.mute.addEventListener("click", toggleMute);
ui.stop.addEventListener("click", () => stopPlayback(true));
ui.agent.addEventListener("change", showAgent);
ui.voice.addEventListener("change", () => {
  const voice = ui.voice.value.trim();
  if (voice && client.state === "ready") send({ type: "config", voice });
});
ui.typed.addEventListener("submit", (e) => {
  e.preventDefault();
  if (sendText(ui.text.value)) ui.text.value = "";
});
setConn("idle");
showAudioStats();
ui.credential.value = sessionStorage.getItem("voice.credential") || "";
ui.credential.addEventListener("change", () => {
  loadAgents();
});
loadAgents();
loadVoices();
