// VoiceChat browser client: microphone → PCM16 over the WebSocket, the server's 24 kHz PCM16 → a jitter-
// buffered AudioWorklet player, transcripts and the assistant's reply streaming into the conversation.
// The protocol is documented in docs/protocol.md (services/session/voicechat_session/protocol.py).
//
// Everything the page knows is mirrored on `window.voicechat` so that tests (and curious people in the
// console) can read the page's own view: connection state, counters from the player worklet, transcripts.

const CAPTURE_RATE = 16000; // what the page announces in `start`; the capture worklet resamples to it
const CAPTURE_FRAME_SAMPLES = 512; // 32 ms frames
const DEFAULT_OUTPUT_RATE = 24000;
const MAX_SEND_BACKLOG_BYTES = 256 * 1024; // a stalled socket drops mic audio instead of queueing minutes of it
const BACKOFF_S = [1, 2, 4, 8, 15, 30];
const PREFS_KEY = "voicechat.prefs";

// Error codes of the protocol (ErrorCode in protocol.py) in words a person can act on.
const ERROR_TEXT = {
  bad_json: "The server could not read a message from this page. Reload the page if this keeps happening.",
  unknown_type: "The server did not understand a message from this page. Reload the page to update it.",
  invalid_message: "The server rejected a message from this page as invalid.",
  not_started: "Audio reached the server before the session had started. Press Start again.",
  already_started: "The microphone session was already running.",
  odd_length_audio: "The server received a damaged audio frame.",
  frame_too_large: "An audio frame was too large for the server.",
  audio_too_fast: "Audio arrived faster than real time, so the server refused it.",
  unknown_voice: "That voice is not available on this server. Pick another voice.",
  llm_unavailable: "The language model is not reachable right now. Try again in a moment.",
  llm_timeout: "The language model took too long to answer. Try again.",
  llm_error: "The language model failed to answer. Try again.",
  stt_failed: "Speech recognition failed for that turn. Please say it again.",
  tts_failed: "Speech synthesis failed; the reply is shown as text only.",
  server_full: "The server is busy: every session slot is in use.",
  idle_timeout: "Disconnected after a long time without activity.",
  session_expired: "The session reached its maximum length and was closed.",
  shutting_down: "The server is restarting.",
  not_ready: "The server is still starting up.",
  internal: "Something went wrong on the server.",
};

// WebSocket close codes (CloseCode in protocol.py) → the error code that explains them.
const CLOSE_REASON = {
  1001: "shutting_down",
  1008: "audio_too_fast",
  1009: "frame_too_large",
  1011: "internal",
  1013: "server_full",
  4000: "idle_timeout",
  4001: "session_expired",
};

// The status line while waiting to reconnect.
const RECONNECT_WHY = { server_full: "Server busy", shutting_down: "Server restarting", not_ready: "Server starting" };

// Closes after which reconnecting on our own would only repeat the problem: wait for the person.
const NO_AUTO_RECONNECT = new Set(["idle_timeout", "session_expired", "audio_too_fast", "frame_too_large"]);

const MIC_ERROR_TEXT = {
  NotAllowedError: "Microphone access was blocked. Allow it in the browser's site settings, then press Start.",
  SecurityError: "Microphone access was blocked. Allow it in the browser's site settings, then press Start.",
  NotFoundError: "No microphone was found. Connect one and press Start.",
  NotReadableError: "The microphone is in use by another application or could not be opened.",
  OverconstrainedError: "The microphone does not support the requested settings.",
  AbortError: "Opening the microphone was interrupted. Press Start to try again.",
};

// --------------------------------------------------------------------------------------------- state
const vc = {
  state: "idle", // idle | connecting | connected | reconnecting | offline
  sessionId: null,
  micOn: false,
  started: false, // `start` sent on this connection
  userSpeaking: false,
  assistantSpeaking: false,
  activity: "off",
  voices: [],
  voice: null,
  speed: 1,
  outputSampleRate: DEFAULT_OUTPUT_RATE,
  contextSampleRate: null,
  contextState: null,
  // player worklet counters (samplesPlayed and bufferedSamples are at the context rate)
  samplesReceived: 0,
  samplesPlayed: 0,
  bufferedSamples: 0,
  samplesFlushed: 0,
  underruns: 0,
  flushes: 0,
  playedPeak: 0, // loudest sample played (0..1)
  playingTurn: null,
  playedByTurn: {},
  receivedByTurn: {},
  // transport counters
  framesSent: 0,
  micFramesDropped: 0,
  audioFramesReceived: 0,
  audioFramesDropped: 0, // binary frames of interrupted turns (or outside audio_start/audio_end)
  micLevel: 0,
  // conversation
  transcripts: [], // final user transcripts: {turn, text}
  partialTranscript: "",
  assistantTexts: [], // final replies: {turn, text}
  interruptedTurns: [],
  turnMetrics: [],
  lastError: null, // {code, message, text}
  errors: [],
  reconnects: 0,
  reconnectInSeconds: null,
  messageCounts: {},
};
window.voicechat = vc;

let ws = null;
let wsSerial = 0;
let userClosed = false;
let closeCodeHint = null; // error code of a fatal error message, explains the close that follows
let reconnectAttempt = 0;
let reconnectTimer = null;
let countdownTimer = null;
let pendingTexts = [];
let prefs = loadPrefs();

let ctx = null;
let audioReady = null; // Promise<void> while the worklets load
let player = null;
let micStream = null;
let micSource = null;
let captureNode = null;

// Turn bookkeeping for the "never play audio of an interrupted turn" rule.
const interrupted = new Set();
let audioTurn = null; // turn whose audio is being accepted (between audio_start and audio_end)
let lastTurnId = -1;
let busyTurn = null; // a user turn awaiting or receiving its reply ("pending" for a text not yet numbered)

// --------------------------------------------------------------------------------------------- DOM
const $ = (id) => document.getElementById(id);
const el = {
  connection: $("connection"),
  connectionText: $("connection-text"),
  reconnectNow: $("reconnect-now"),
  error: $("error"),
  errorText: $("error-text"),
  errorDismiss: $("error-dismiss"),
  conversation: $("conversation"),
  emptyState: $("empty-state"),
  activity: $("activity"),
  activityText: $("activity-text"),
  micLevel: $("mic-level"),
  micLevelBar: document.querySelector("#mic-level > span"),
  start: $("start"),
  startLabel: $("start-label"),
  interrupt: $("interrupt"),
  reset: $("reset"),
  textForm: $("text-form"),
  textInput: $("text-input"),
  voice: $("voice"),
  speed: $("speed"),
  speedValue: $("speed-value"),
  sessionInfo: $("session-info"),
};

// --------------------------------------------------------------------------------------------- helpers
function loadPrefs() {
  try {
    return JSON.parse(localStorage.getItem(PREFS_KEY) || "{}") || {};
  } catch {
    return {};
  }
}

function savePrefs() {
  try {
    localStorage.setItem(PREFS_KEY, JSON.stringify(prefs));
  } catch {
    // Storage disabled (private mode): preferences just do not persist.
  }
}

function wsUrl() {
  const override = new URLSearchParams(location.search).get("ws");
  if (override) return override;
  // Relative to the page, so the client also works behind a path prefix; wss:// whenever the page is https.
  const url = new URL("ws", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return null;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

function send(message) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(message));
  return true;
}

// --------------------------------------------------------------------------------------------- errors
// `connection`: the error explains a refused or lost connection, so a successful reconnect clears it.
function showError(text, code = null, message = null, connection = false) {
  vc.lastError = { code, message, text, connection };
  vc.errors.push(vc.lastError);
  el.errorText.textContent = text;
  el.error.hidden = false;
}

function clearError() {
  el.error.hidden = true;
  el.errorText.textContent = "";
}

function textForCode(code, fallback) {
  return ERROR_TEXT[code] || fallback || "Something went wrong.";
}

// --------------------------------------------------------------------------------------------- connection
function setConnection(state, text) {
  vc.state = state;
  el.connection.dataset.state = state;
  if (el.connectionText.textContent !== text) el.connectionText.textContent = text; // no repeated announcements
  el.reconnectNow.hidden = !(state === "reconnecting" || state === "offline");
  updateControls();
}

function connect() {
  clearTimeout(reconnectTimer);
  clearInterval(countdownTimer);
  reconnectTimer = countdownTimer = null;
  vc.reconnectInSeconds = null;
  if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) return;
  userClosed = false;
  closeCodeHint = null;
  vc.started = false;
  setConnection("connecting", reconnectAttempt > 0 ? "Reconnecting…" : "Connecting…");
  const serial = ++wsSerial;
  let socket;
  try {
    socket = new WebSocket(wsUrl());
  } catch (err) {
    showError(`Cannot open the connection: ${err.message}`);
    setConnection("offline", "Offline");
    return;
  }
  socket.binaryType = "arraybuffer";
  ws = socket;
  socket.onmessage = (event) => {
    if (serial !== wsSerial) return;
    if (typeof event.data === "string") onControl(event.data);
    else onAudio(event.data);
  };
  socket.onclose = (event) => {
    if (serial !== wsSerial) return;
    onClose(event);
  };
}

function onClose(event) {
  const wasReady = vc.sessionId !== null;
  ws = null;
  el.sessionInfo.textContent = "";
  vc.sessionId = null;
  vc.started = false;
  vc.userSpeaking = false;
  endAllTurns();
  flushPlayback("disconnected");
  if (userClosed) {
    setConnection("idle", "Not connected");
    return;
  }
  const code = closeCodeHint || CLOSE_REASON[event.code] || null;
  // A fatal `error` message was shown already; otherwise the close code explains the drop.
  if (code && !closeCodeHint) showError(textForCode(code, event.reason), code, event.reason, true);
  if (code && NO_AUTO_RECONNECT.has(code)) {
    setConnection("offline", "Disconnected");
    return;
  }
  if (wasReady && code !== "server_full") reconnectAttempt = 0;
  scheduleReconnect(code);
}

function scheduleReconnect(code) {
  const delay = BACKOFF_S[Math.min(reconnectAttempt, BACKOFF_S.length - 1)];
  reconnectAttempt += 1;
  const why = RECONNECT_WHY[code] || "Connection lost";
  const deadline = performance.now() + delay * 1000;
  const tick = () => {
    const left = Math.max(1, Math.ceil((deadline - performance.now()) / 1000));
    vc.reconnectInSeconds = left;
    setConnection("reconnecting", `${why}. Reconnecting in ${left} s…`);
  };
  tick();
  countdownTimer = setInterval(tick, 250);
  reconnectTimer = setTimeout(() => {
    vc.reconnects += 1;
    connect();
  }, delay * 1000);
}

function onControl(raw) {
  let msg;
  try {
    msg = JSON.parse(raw);
  } catch {
    console.warn("VoiceChat: unreadable control message", raw);
    return;
  }
  vc.messageCounts[msg.type] = (vc.messageCounts[msg.type] || 0) + 1;
  if (typeof msg.turn_id === "number" && msg.turn_id > lastTurnId) lastTurnId = msg.turn_id;
  const handler = HANDLERS[msg.type];
  if (handler) handler(msg);
  else console.warn("VoiceChat: unknown message type", msg.type);
}

const HANDLERS = {
  ready(msg) {
    vc.sessionId = msg.session_id;
    vc.outputSampleRate = msg.output_sample_rate || DEFAULT_OUTPUT_RATE;
    const reconnected = reconnectAttempt > 0 || vc.reconnects > 0;
    reconnectAttempt = 0;
    if (vc.lastError?.connection && !el.error.hidden) clearError();
    setVoices(msg.voices || [], msg.voice, msg.speed);
    setConnection("connected", "Connected");
    renderSessionInfo(msg);
    if (reconnected && hasTurns()) addNote("Reconnected with a new session: the assistant starts with a fresh memory.");
    // Carry the person's choices into the new session.
    if (vc.micOn) sendStart();
    else if (vc.voice !== msg.voice || vc.speed !== msg.speed) sendConfigure();
    for (const text of pendingTexts.splice(0)) send({ type: "text", text });
  },
  started(msg) {
    vc.voice = msg.voice;
    vc.speed = msg.speed;
    reflectVoiceSettings();
  },
  vad(msg) {
    vc.userSpeaking = !!msg.speaking;
    updateActivity();
  },
  transcript(msg) {
    if (msg.final && !msg.text.trim()) {
      // Noise, not words: the server skips the turn, so the page forgets its bubble.
      vc.partialTranscript = "";
      const view = turnViews.get(msg.turn_id);
      if (view && !view.assistant) {
        view.root.remove();
        turnViews.delete(msg.turn_id);
      }
      updateActivity();
      return;
    }
    const view = turnView(msg.turn_id);
    setUserText(view, msg.text, !msg.final);
    if (msg.final) {
      vc.partialTranscript = "";
      vc.transcripts.push({ turn: msg.turn_id, text: msg.text });
      busyTurn = msg.turn_id;
    } else {
      vc.partialTranscript = msg.text;
    }
    updateActivity();
  },
  assistant(msg) {
    if (interrupted.has(msg.turn_id) && !msg.final) return;
    const view = turnView(msg.turn_id);
    const body = assistantBody(view);
    if (msg.final) {
      if (msg.text) body.textContent = msg.text;
      setStreaming(body, false);
      vc.assistantTexts.push({ turn: msg.turn_id, text: msg.text });
    } else {
      body.textContent += msg.text;
      setStreaming(body, true);
      if (busyTurn === null || busyTurn === "pending") busyTurn = msg.turn_id;
    }
    scrollToEnd();
    updateActivity();
  },
  audio_start(msg) {
    if (interrupted.has(msg.turn_id)) {
      audioTurn = null;
      return;
    }
    audioTurn = msg.turn_id;
    if (busyTurn === null || busyTurn === "pending") busyTurn = msg.turn_id;
    if (msg.sample_rate && msg.sample_rate !== vc.outputSampleRate) {
      vc.outputSampleRate = msg.sample_rate;
      player?.port.postMessage({ type: "rate", rate: msg.sample_rate });
    }
    updateActivity();
  },
  audio_end(msg) {
    if (audioTurn === msg.turn_id) {
      player?.port.postMessage({ type: "end", turn: msg.turn_id });
      audioTurn = null;
    }
  },
  interrupted(msg) {
    markInterrupted(msg.turn_id);
  },
  history_cleared() {
    addNote("Conversation history cleared.");
  },
  error(msg) {
    if (msg.fatal) closeCodeHint = msg.code;
    showError(textForCode(msg.code, msg.message), msg.code, msg.message, !!msg.fatal);
    if (msg.code.startsWith("llm_") || msg.code === "stt_failed") endAllTurns();
    if (msg.code === "unknown_voice") {
      // Fall back to what the server actually uses (its `started` reply updates the select).
      delete prefs.voice;
      savePrefs();
      send({ type: "configure", speed: vc.speed });
    }
    updateActivity();
  },
  turn_metrics(msg) {
    vc.turnMetrics.push(msg);
    renderMetrics(msg);
    if (busyTurn === msg.turn_id) busyTurn = null;
    updateActivity();
  },
};

function sendStart() {
  if (vc.started) return;
  if (send({ type: "start", sample_rate: CAPTURE_RATE, voice: vc.voice || undefined, speed: vc.speed })) {
    vc.started = true;
  }
}

function sendConfigure() {
  send({ type: "configure", voice: vc.voice || undefined, speed: vc.speed });
}

// --------------------------------------------------------------------------------------------- audio out
function onAudio(buffer) {
  vc.audioFramesReceived += 1;
  if (audioTurn === null || interrupted.has(audioTurn) || !player) {
    vc.audioFramesDropped += 1;
    return;
  }
  player.port.postMessage({ type: "audio", turn: audioTurn, pcm: buffer }, [buffer]);
}

function flushPlayback(reason) {
  audioTurn = null;
  player?.port.postMessage({ type: "flush", reason });
}

function markInterrupted(turnId) {
  interrupted.add(turnId);
  if (!vc.interruptedTurns.includes(turnId)) vc.interruptedTurns.push(turnId);
  if (audioTurn === turnId) audioTurn = null;
  flushPlayback("interrupted");
  if (busyTurn === turnId || busyTurn === "pending") busyTurn = null;
  const view = document.querySelector(`.turn[data-turn="${turnId}"]`);
  if (view) {
    view.classList.add("interrupted");
    const body = view.querySelector(".msg.assistant .body");
    if (body) setStreaming(body, false);
  }
  updateActivity();
}

function interruptAssistant() {
  if (!isBusy()) return;
  // Flush at once, locally: the person must not wait for the server's `interrupted` to stop hearing it.
  const turn = typeof busyTurn === "number" ? busyTurn : Math.max(lastTurnId, audioTurn ?? -1);
  send({ type: "interrupt" });
  if (turn >= 0) markInterrupted(turn);
  else flushPlayback("interrupted");
  busyTurn = null;
  updateActivity();
}

function onPlayerMessage(event) {
  const m = event.data;
  if (m.type === "turn_playing") vc.playingTurn = m.turn;
  if (m.received !== undefined) {
    vc.samplesReceived = m.received;
    vc.samplesPlayed = m.played;
    vc.bufferedSamples = m.buffered;
    vc.samplesFlushed = m.dropped;
    vc.underruns = m.underruns;
    vc.playedPeak = m.peak;
    vc.flushes = m.flushes;
    vc.playedByTurn = m.playedByTurn;
    vc.receivedByTurn = m.receivedByTurn;
    vc.assistantSpeaking = m.type !== "drained" && (m.playing || m.buffered > 0);
    updateActivity();
  }
}

// Created inside a click handler (a user gesture), so the context may start without autoplay exemptions.
function ensureAudio() {
  if (!ctx) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx || !("audioWorklet" in Ctx.prototype)) {
      return Promise.reject(new Error("This browser cannot process audio here (no AudioWorklet)."));
    }
    ctx = new Ctx({ latencyHint: "interactive" });
    vc.contextSampleRate = ctx.sampleRate;
    ctx.onstatechange = () => {
      vc.contextState = ctx.state;
    };
    vc.contextState = ctx.state;
    audioReady = (async () => {
      await ctx.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
      await ctx.audioWorklet.addModule(new URL("playback-worklet.js", import.meta.url));
      player = new AudioWorkletNode(ctx, "voicechat-playback", {
        numberOfInputs: 0,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { inputRate: vc.outputSampleRate, prebufferMs: 60 },
      });
      player.port.onmessage = onPlayerMessage;
      player.onprocessorerror = () => showError("Audio playback stopped because of an internal error. Reload the page.");
      player.connect(ctx.destination);
    })();
  }
  const resumed = ctx.state === "suspended" ? ctx.resume() : Promise.resolve();
  return Promise.all([audioReady, resumed]).then(() => {
    vc.contextState = ctx.state;
  });
}

// --------------------------------------------------------------------------------------------- audio in
async function startMic() {
  if (vc.micOn) return;
  el.start.disabled = true;
  try {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw Object.assign(new Error("insecure"), { name: "InsecureContext" });
    }
    const audioPromise = ensureAudio();
    micStream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: { ideal: 1 } },
    });
    await audioPromise;
    micSource = ctx.createMediaStreamSource(micStream);
    captureNode = new AudioWorkletNode(ctx, "voicechat-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      processorOptions: { targetRate: CAPTURE_RATE, frameSamples: CAPTURE_FRAME_SAMPLES },
    });
    captureNode.port.onmessage = onMicFrame;
    captureNode.onprocessorerror = () => {
      showError("The microphone stopped because of an internal error. Press Start again.");
      stopMic();
    };
    micSource.connect(captureNode);
    for (const track of micStream.getAudioTracks()) {
      track.onended = () => {
        if (vc.micOn) {
          showError("The microphone was disconnected.");
          stopMic();
        }
      };
    }
    vc.micOn = true;
    if (vc.state === "connected") sendStart();
    else if (vc.state !== "connecting") connect();
  } catch (err) {
    releaseMic();
    if (err.name === "InsecureContext") {
      showError("The microphone needs a secure page: open this site over https:// (or on localhost).");
    } else {
      showError(MIC_ERROR_TEXT[err.name] || `Could not start the microphone: ${err.message}`);
    }
  } finally {
    el.start.disabled = false;
    updateControls();
    updateActivity();
  }
}

function releaseMic() {
  if (captureNode) {
    captureNode.port.postMessage({ type: "stop" });
    captureNode.port.onmessage = null;
    captureNode.disconnect();
    captureNode = null;
  }
  micSource?.disconnect();
  micSource = null;
  micStream?.getTracks().forEach((t) => t.stop());
  micStream = null;
  vc.micOn = false;
  vc.micLevel = 0;
  setMicLevel(0);
}

function setMicLevel(level) {
  el.micLevelBar.style.transform = `scaleX(${level.toFixed(3)})`;
  el.micLevel.setAttribute("aria-valuenow", String(Math.round(level * 100)));
}

function stopMic() {
  releaseMic();
  vc.userSpeaking = false;
  interruptAssistant();
  flushPlayback("stop");
  updateControls();
  updateActivity();
}

function onMicFrame(event) {
  const m = event.data;
  if (m.type !== "frame") return;
  // Speech sits around -30..-15 dBFS: map -60..-10 dBFS onto the bar, smoothed a little.
  const db = 20 * Math.log10(Math.max(m.rms, 1e-6));
  const level = Math.min(1, Math.max(0, (db + 60) / 50));
  vc.micLevel = level > vc.micLevel ? level : 0.8 * vc.micLevel + 0.2 * level;
  setMicLevel(vc.micLevel);
  if (!vc.started || !ws || ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > MAX_SEND_BACKLOG_BYTES) {
    vc.micFramesDropped += 1;
    return;
  }
  ws.send(m.pcm);
  vc.framesSent += 1;
}

// --------------------------------------------------------------------------------------------- conversation view
const turnViews = new Map();
let pendingTextView = null;

function hasTurns() {
  return turnViews.size > 0 || pendingTextView !== null;
}

function newTurnElement() {
  el.emptyState.hidden = true;
  const article = document.createElement("article");
  article.className = "turn";
  el.conversation.appendChild(article);
  return article;
}

function turnView(turnId) {
  let view = turnViews.get(turnId);
  if (view) return view;
  if (pendingTextView) {
    // The first numbered message after a typed turn belongs to it.
    view = pendingTextView;
    pendingTextView = null;
  } else {
    view = { root: newTurnElement(), user: null, assistant: null, metrics: null };
  }
  view.root.dataset.turn = String(turnId);
  turnViews.set(turnId, view);
  return view;
}

function message(view, role) {
  const box = document.createElement("div");
  box.className = `msg ${role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("p");
  body.className = "body";
  box.append(who, body);
  if (role === "user") view.root.prepend(box);
  else view.root.appendChild(box);
  return box;
}

function setUserText(view, text, partial) {
  if (!view.user) view.user = message(view, "user");
  const body = view.user.querySelector(".body");
  body.textContent = text || (partial ? "…" : "(nothing heard)");
  setStreaming(body, partial, "partial");
  scrollToEnd();
}

function assistantBody(view) {
  if (!view.assistant) view.assistant = message(view, "assistant");
  return view.assistant.querySelector(".body");
}

const METRIC_PARTS = [
  ["stt_ms", "STT", "Speech-to-text time for your utterance"],
  ["llm_ttft_ms", "LLM first token", "Time until the language model produced its first token"],
  ["tts_first_chunk_ms", "TTS first chunk", "Time to synthesise the first audio chunk"],
  ["time_to_first_audio_ms", "First audio", "From the end of your turn to the first audio sent"],
];

function renderMetrics(msg) {
  const view = turnView(msg.turn_id);
  if (!view.metrics) {
    view.metrics = document.createElement("p");
    view.metrics.className = "metrics";
    (view.assistant || view.root).appendChild(view.metrics);
  }
  view.metrics.replaceChildren();
  for (const [key, label, title] of METRIC_PARTS) {
    const value = fmtMs(msg[key]);
    if (value === null) continue;
    const part = document.createElement("span");
    part.title = title;
    part.dataset.metric = key;
    part.innerHTML = `${label} <b></b>`;
    part.querySelector("b").textContent = value;
    view.metrics.appendChild(part);
  }
  if (msg.interrupted) view.root.classList.add("interrupted");
  scrollToEnd();
}

function addNote(text) {
  el.emptyState.hidden = true;
  const note = document.createElement("p");
  note.className = "note";
  note.textContent = text;
  el.conversation.appendChild(note);
  scrollToEnd();
}

// Screen readers announce a message once it is complete (aria-busy), not every streamed word.
function setStreaming(body, on, cls = "streaming") {
  body.classList.toggle(cls, on);
  if (on) body.setAttribute("aria-busy", "true");
  else body.removeAttribute("aria-busy");
}

function scrollToEnd() {
  el.conversation.scrollTop = el.conversation.scrollHeight;
}

function clearConversation() {
  turnViews.clear();
  pendingTextView = null;
  for (const node of [...el.conversation.children]) {
    if (node !== el.emptyState) node.remove();
  }
  el.emptyState.hidden = false;
}

// --------------------------------------------------------------------------------------------- status UI
function isBusy() {
  return busyTurn !== null || audioTurn !== null || vc.bufferedSamples > 0 || vc.assistantSpeaking;
}

function endAllTurns() {
  busyTurn = null;
  audioTurn = null;
  document.querySelectorAll(".body.streaming").forEach((b) => setStreaming(b, false));
}

function updateActivity() {
  let activity;
  let text;
  if (vc.assistantSpeaking) {
    [activity, text] = ["assistant", "Assistant speaking"];
  } else if (vc.micOn && vc.userSpeaking) {
    [activity, text] = ["user", "Hearing you…"];
  } else if (busyTurn !== null) {
    [activity, text] = ["thinking", "Thinking…"];
  } else if (vc.micOn) {
    [activity, text] = ["listening", "Listening"];
  } else {
    [activity, text] = ["off", "Microphone off"];
  }
  vc.activity = activity;
  el.activity.dataset.activity = activity;
  if (el.activityText.textContent !== text) el.activityText.textContent = text;
  updateControls();
}

function updateControls() {
  el.start.setAttribute("aria-pressed", String(vc.micOn));
  el.start.classList.toggle("live", vc.micOn);
  el.startLabel.textContent = vc.micOn ? "Stop" : "Start";
  el.start.setAttribute("aria-label", vc.micOn ? "Stop the microphone" : "Start the microphone");
  el.interrupt.disabled = !(vc.state === "connected" && isBusy());
}

function setVoices(voices, serverVoice, serverSpeed) {
  if (voices.length) vc.voices = voices;
  const wanted = prefs.voice && vc.voices.includes(prefs.voice) ? prefs.voice : serverVoice || vc.voices[0];
  el.voice.replaceChildren(
    ...vc.voices.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = voiceLabel(name);
      return option;
    }),
  );
  vc.voice = wanted || null;
  const speed = typeof prefs.speed === "number" ? prefs.speed : serverSpeed;
  if (typeof speed === "number") vc.speed = speed;
  reflectVoiceSettings();
}

// Kokoro voice ids: first letter language, second gender (af_heart = American English, female).
const VOICE_LANG = { a: "US English", b: "UK English", j: "Japanese", z: "Mandarin", e: "Spanish", f: "French", h: "Hindi", i: "Italian", p: "Portuguese" };
function voiceLabel(name) {
  const m = /^([a-z])([fm])_(.+)$/.exec(name);
  if (!m || !VOICE_LANG[m[1]]) return name;
  const pretty = m[3].charAt(0).toUpperCase() + m[3].slice(1);
  return `${pretty} (${VOICE_LANG[m[1]]}, ${m[2] === "f" ? "female" : "male"})`;
}

function reflectVoiceSettings() {
  if (vc.voice) {
    if (![...el.voice.options].some((o) => o.value === vc.voice)) {
      el.voice.appendChild(new Option(voiceLabel(vc.voice), vc.voice));
    }
    el.voice.value = vc.voice;
  }
  el.speed.value = String(vc.speed);
  el.speedValue.textContent = `${Number(vc.speed).toFixed(2)}×`;
  el.speed.setAttribute("aria-valuetext", `${Number(vc.speed).toFixed(2)} times`);
}

function renderSessionInfo(msg) {
  const parts = [`Session ${String(msg.session_id).slice(0, 8)}`];
  if (msg.llm_model) {
    const warm = msg.llm_warm_ttft_ms != null ? ` (warm first token ${fmtMs(msg.llm_warm_ttft_ms)})` : "";
    parts.push(`LLM ${msg.llm_model}${warm}`);
  }
  if (typeof msg.connect_ms === "number") parts.push(`ready in ${fmtMs(msg.connect_ms)}`);
  if (msg.sharing) parts.push(msg.sharing === "pod" ? "models shared per pod" : "models loaded per connection");
  el.sessionInfo.textContent = parts.join(" · ");
}

// --------------------------------------------------------------------------------------------- events
el.start.addEventListener("click", () => {
  if (vc.micOn) stopMic();
  else startMic();
});

el.interrupt.addEventListener("click", interruptAssistant);

el.reset.addEventListener("click", () => {
  interruptAssistant();
  flushPlayback("reset");
  send({ type: "reset" });
  clearConversation();
  endAllTurns();
  updateActivity();
});

el.textForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = el.textInput.value.trim();
  if (!text) return;
  ensureAudio().catch((err) => showError(err.message));
  if (isBusy()) interruptAssistant();
  el.textInput.value = "";
  pendingTextView = { root: newTurnElement(), user: null, assistant: null, metrics: null };
  setUserText(pendingTextView, text, false);
  busyTurn = "pending";
  if (vc.state === "connected") send({ type: "text", text });
  else {
    pendingTexts.push(text);
    if (vc.state !== "connecting") connect();
  }
  updateActivity();
});

el.voice.addEventListener("change", () => {
  vc.voice = el.voice.value;
  prefs.voice = vc.voice;
  savePrefs();
  sendConfigure();
});

el.speed.addEventListener("input", () => {
  const value = Number(el.speed.value).toFixed(2);
  el.speedValue.textContent = `${value}×`;
  el.speed.setAttribute("aria-valuetext", `${value} times`);
});

el.speed.addEventListener("change", () => {
  vc.speed = Number(el.speed.value);
  prefs.speed = vc.speed;
  savePrefs();
  reflectVoiceSettings();
  sendConfigure();
});

el.errorDismiss.addEventListener("click", clearError);

el.reconnectNow.addEventListener("click", () => {
  reconnectAttempt = Math.max(1, reconnectAttempt);
  connect();
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && isBusy()) {
    event.preventDefault();
    interruptAssistant();
  }
});

window.addEventListener("pagehide", () => {
  userClosed = true;
  ws?.close(1000, "page closed");
});

// Back/forward cache: the page comes back without its socket.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) connect();
});

// Voices and defaults before the socket is up (the select is usable at once); `ready` refreshes them.
fetch(new URL("api/info", document.baseURI))
  .then((r) => (r.ok ? r.json() : null))
  .then((info) => {
    if (info && vc.voices.length === 0) {
      setVoices(info.voices || [], info.voice || info.default_voice, info.speed || info.default_speed);
    }
  })
  .catch(() => {});

// Wide screens have room to show the voice settings; phones keep them folded.
if (window.matchMedia("(min-width: 700px)").matches) $("settings").open = true;
reflectVoiceSettings();
updateActivity();
connect();
