// VoiceChat browser client: microphone → PCM16 over the WebSocket, the server's 24 kHz PCM16 → a jitter-
// buffered AudioWorklet player, transcripts and the assistant's reply streaming into the conversation.
// The protocol is documented in docs/protocol.md; protocol.js is the page's copy of its vocabulary.
//
// This module wires the parts together and holds the page's decisions (what each server message means
// for the person); the parts: protocol.js (vocabulary), connection.js (socket, reconnecting),
// audio.js (capture and playback), turns.js (turn bookkeeping), conversation.js and page.js (the DOM).

import { AudioIO, CAPTURE_RATE, micErrorText } from "./audio.js";
import { Connection, socketUrl, tokenSource } from "./connection.js";
import { ConversationView } from "./conversation.js";
import { PageView } from "./page.js";
import { loadPrefs, savePrefs } from "./prefs.js";
import { clientMessage, errorText, OUTPUT_SAMPLE_RATE, RESUME_FAILURE_TEXT } from "./protocol.js";
import { ResumeStore } from "./resume.js";
import { createState } from "./state.js";
import { TurnTracker } from "./turns.js";

const vc = createState();
window.voicechat = vc;

const prefs = loadPrefs();
const page = new PageView();
const el = page.el;
const conversation = new ConversationView(el.conversation, el.emptyState);
const turns = new TurnTracker();
const pendingTexts = []; // typed before the session was ready
const resume = new ResumeStore();
let resetPending = false; // a `reset` is on its way: tokens of the old conversation must not be kept

const target = socketUrl(document.baseURI, new URLSearchParams(location.search).get("ws"));
vc.socketUrl = target.url;
if (target.rejected !== null) {
  vc.rejectedSocketUrl = target.rejected;
  console.warn("VoiceChat: ignoring ?ws= that is not this page's own server", target.rejected);
}

const connection = new Connection(
  target.url,
  vc,
  {
    status: setConnection,
    message: onControl,
    audio: onAudio,
    closed: onClosed,
    error: showError,
  },
  tokenSource(document.baseURI),
);

const audio = new AudioIO(vc, {
  played: updateActivity,
  frame: onMicFrame,
  micFailed(text) {
    if (!vc.micOn) return;
    showError(text);
    stopMic();
  },
  error: showError,
});

// --------------------------------------------------------------------------------------------- errors
// `connection`: the error explains a refused or lost connection, so a successful reconnect clears it.
function showError(text, code = null, message = null, connection = false) {
  vc.lastError = { code, message, text, connection };
  vc.errors.push(vc.lastError);
  page.showError(text);
}

// --------------------------------------------------------------------------------------------- connection
function setConnection(state, text) {
  // A new socket has not sent `start` yet.
  if (state === "connecting") vc.started = false;
  vc.state = state;
  page.showConnection(state, text);
  updateControls();
}

function onClosed() {
  resetPending = false; // that socket's tokens are all in; the next one starts clean
  page.clearSessionInfo();
  vc.sessionId = null;
  vc.started = false;
  vc.userSpeaking = false;
  endAllTurns();
  flushPlayback("disconnected");
}

function send(message) {
  return connection.send(message);
}

// `resumeToken`: continue that conversation (only in the first `start` of a connection).
function sendStart(resumeToken = null) {
  if (vc.started) return;
  // Resuming, only the person's own choices go along: otherwise the conversation's voice and speed apply.
  const voice = resumeToken && !prefs.voice ? undefined : vc.voice;
  const speed = resumeToken && typeof prefs.speed !== "number" ? undefined : vc.speed;
  if (send(clientMessage.start(CAPTURE_RATE, voice, speed, resumeToken))) {
    vc.started = true;
    if (resumeToken) vc.resumeSent += 1;
  }
}

function sendConfigure() {
  send(clientMessage.configure(vc.voice, vc.speed));
}

function onControl(msg) {
  vc.messageCounts[msg.type] = (vc.messageCounts[msg.type] || 0) + 1;
  turns.seen(msg.turn_id);
  const handler = HANDLERS[msg.type];
  if (handler) handler(msg);
  else console.warn("VoiceChat: unknown message type", msg.type);
}

// One handler per server message type (protocol.js SERVER_MESSAGE_TYPES; `history` is never asked for).
const HANDLERS = {
  ready(msg) {
    vc.sessionId = msg.session_id;
    vc.outputSampleRate = msg.output_sample_rate || OUTPUT_SAMPLE_RATE;
    const reconnected = connection.sessionReady();
    if (vc.lastError?.connection && page.errorShown) page.clearError();
    turns.newSession();
    conversation.newSession();
    setVoices(msg.voices || [], msg.voice, msg.speed);
    setConnection("connected", "Connected");
    page.showSessionInfo(msg);
    const token = resume.token;
    if (token) {
      // Continue the conversation this tab had (a reconnect, a reload, another pod after a drain): `start`
      // carries its token and `resumed` answers.
      sendStart(token);
    } else {
      resume.keep(msg.resume_token);
      if (reconnected && conversation.hasTurns()) {
        conversation.addNote("Reconnected with a new session: the assistant starts with a fresh memory.");
      }
      // Carry the person's choices into the new session.
      if (vc.micOn) sendStart();
      else if (vc.voice !== msg.voice || vc.speed !== msg.speed) sendConfigure();
    }
    for (const text of pendingTexts.splice(0)) send(clientMessage.text(text));
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
      conversation.dropSilentTurn(msg.turn_id);
      updateActivity();
      return;
    }
    conversation.transcript(msg.turn_id, msg.text, msg.final);
    if (msg.final) {
      vc.partialTranscript = "";
      vc.transcripts.push({ turn: msg.turn_id, text: msg.text });
      turns.heard(msg.turn_id);
    } else {
      vc.partialTranscript = msg.text;
    }
    updateActivity();
  },
  assistant(msg) {
    if (turns.isInterrupted(msg.turn_id) && !msg.final) return;
    conversation.assistant(msg.turn_id, msg.text, msg.final);
    if (msg.final) vc.assistantTexts.push({ turn: msg.turn_id, text: msg.text });
    else turns.replying(msg.turn_id);
    updateActivity();
  },
  audio_start(msg) {
    if (!turns.audioStarted(msg.turn_id)) return;
    if (msg.sample_rate && msg.sample_rate !== vc.outputSampleRate) {
      vc.outputSampleRate = msg.sample_rate;
      audio.setOutputRate(msg.sample_rate);
    }
    updateActivity();
  },
  audio_end(msg) {
    if (turns.audioEnded(msg.turn_id)) audio.endTurn(msg.turn_id);
  },
  interrupted(msg) {
    markInterrupted(msg.turn_id);
  },
  history_cleared() {
    resetPending = false;
    conversation.addNote("Conversation history cleared.");
  },
  resumed(msg) {
    vc.resumeOutcomes.push(msg.resumed ? "ok" : msg.error);
    vc.sessionId = msg.session_id;
    if (msg.resumed) {
      vc.restoredMessages = msg.messages || [];
      if (conversation.hasTurns()) {
        conversation.addNote("Reconnected: the conversation continues.");
      } else {
        // After a reload the page is empty: show the conversation the assistant remembers.
        conversation.showEarlier(vc.restoredMessages);
        if (vc.restoredMessages.length) conversation.addNote("The earlier conversation continues.");
      }
    } else {
      resume.forget();
      const why = RESUME_FAILURE_TEXT[msg.error] || msg.message || "the conversation could not be continued";
      conversation.addNote(`Started a new conversation: ${why}.`);
    }
  },
  resume_token(msg) {
    if (!resetPending) resume.keep(msg.token);
  },
  error(msg) {
    if (msg.fatal) connection.fatal(msg.code);
    showError(errorText(msg.code, msg.message), msg.code, msg.message, !!msg.fatal);
    if (msg.code.startsWith("llm_") || msg.code === "stt_failed") endAllTurns();
    if (msg.code === "unknown_voice") {
      // Fall back to what the server actually uses (its `started` reply updates the select).
      delete prefs.voice;
      savePrefs(prefs);
      send(clientMessage.configure(undefined, vc.speed));
    }
    updateActivity();
  },
  turn_metrics(msg) {
    vc.turnMetrics.push(msg);
    conversation.renderMetrics(msg);
    turns.finished(msg.turn_id);
    updateActivity();
  },
};

// --------------------------------------------------------------------------------------------- audio out
function onAudio(buffer) {
  vc.audioFramesReceived += 1;
  const turn = turns.audioTarget();
  if (turn === null || !audio.canPlay) {
    vc.audioFramesDropped += 1;
    return;
  }
  audio.play(turn, buffer);
}

function flushPlayback(reason) {
  turns.flushed();
  audio.flush(reason);
}

function markInterrupted(turnId) {
  turns.markInterrupted(turnId);
  if (!vc.interruptedTurns.includes(turnId)) vc.interruptedTurns.push(turnId);
  flushPlayback("interrupted");
  conversation.markInterrupted(turnId);
  updateActivity();
}

function interruptAssistant() {
  if (!isBusy()) return;
  // Flush at once, locally: the person must not wait for the server's `interrupted` to stop hearing it.
  const turn = turns.toInterrupt();
  send(clientMessage.interrupt());
  if (turn >= 0) markInterrupted(turn);
  else flushPlayback("interrupted");
  turns.abandon();
  updateActivity();
}

// --------------------------------------------------------------------------------------------- audio in
async function startMic() {
  if (vc.micOn) return;
  el.start.disabled = true;
  try {
    await audio.openMic();
    vc.micOn = true;
    if (vc.state === "connected") sendStart();
    else if (vc.state !== "connecting") connection.connect();
  } catch (err) {
    releaseMic();
    showError(micErrorText(err));
  } finally {
    el.start.disabled = false;
    updateControls();
    updateActivity();
  }
}

function releaseMic() {
  audio.releaseMic();
  vc.micOn = false;
  page.setMicLevel(0);
}

function stopMic() {
  releaseMic();
  vc.userSpeaking = false;
  interruptAssistant();
  flushPlayback("stop");
  updateControls();
  updateActivity();
}

function onMicFrame(pcm) {
  page.setMicLevel(vc.micLevel);
  if (vc.started && connection.sendAudio(pcm)) vc.framesSent += 1;
  else vc.micFramesDropped += 1;
}

// --------------------------------------------------------------------------------------------- status
function isBusy() {
  return turns.active || vc.bufferedSamples > 0 || vc.assistantSpeaking;
}

function endAllTurns() {
  turns.endAll();
  conversation.endStreaming();
}

function updateActivity() {
  let activity;
  let text;
  if (vc.assistantSpeaking) {
    [activity, text] = ["assistant", "Assistant speaking"];
  } else if (vc.micOn && vc.userSpeaking) {
    [activity, text] = ["user", "Hearing you…"];
  } else if (turns.thinking) {
    [activity, text] = ["thinking", "Thinking…"];
  } else if (vc.micOn) {
    [activity, text] = ["listening", "Listening"];
  } else {
    [activity, text] = ["off", "Microphone off"];
  }
  vc.activity = activity;
  page.showActivity(activity, text);
  updateControls();
}

function updateControls() {
  page.showControls(vc.micOn, vc.state === "connected" && isBusy());
}

function setVoices(voices, serverVoice, serverSpeed) {
  if (voices.length) vc.voices = voices;
  const wanted = prefs.voice && vc.voices.includes(prefs.voice) ? prefs.voice : serverVoice || vc.voices[0];
  page.showVoiceOptions(vc.voices);
  vc.voice = wanted || null;
  const speed = typeof prefs.speed === "number" ? prefs.speed : serverSpeed;
  if (typeof speed === "number") vc.speed = speed;
  reflectVoiceSettings();
}

function reflectVoiceSettings() {
  page.showVoiceSettings(vc.voice, vc.speed);
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
  // Forget the conversation here too: a reconnect before the server's answer must not bring it back.
  resume.forget();
  resetPending = send(clientMessage.reset());
  conversation.clear();
  endAllTurns();
  updateActivity();
});

el.textForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = el.textInput.value.trim();
  if (!text) return;
  audio.ensure().catch((err) => showError(err.message));
  if (isBusy()) interruptAssistant();
  el.textInput.value = "";
  conversation.addTypedTurn(text);
  turns.typed();
  if (vc.state === "connected") send(clientMessage.text(text));
  else {
    pendingTexts.push(text);
    if (vc.state !== "connecting") connection.connect();
  }
  updateActivity();
});

el.voice.addEventListener("change", () => {
  vc.voice = el.voice.value;
  prefs.voice = vc.voice;
  savePrefs(prefs);
  sendConfigure();
});

el.speed.addEventListener("input", () => page.showSpeed(el.speed.value));

el.speed.addEventListener("change", () => {
  vc.speed = Number(el.speed.value);
  prefs.speed = vc.speed;
  savePrefs(prefs);
  reflectVoiceSettings();
  sendConfigure();
});

el.errorDismiss.addEventListener("click", () => page.clearError());

el.reconnectNow.addEventListener("click", () => connection.reconnectNow());

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && isBusy()) {
    event.preventDefault();
    interruptAssistant();
  }
});

window.addEventListener("pagehide", () => connection.close());

// Back/forward cache: the page comes back without its socket.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) connection.connect();
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
if (window.matchMedia("(min-width: 700px)").matches) el.settings.open = true;
reflectVoiceSettings();
updateActivity();
connection.connect();
