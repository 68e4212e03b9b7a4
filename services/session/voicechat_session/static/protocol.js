// The WebSocket protocol's vocabulary, the page's one copy of services/session/voicechat_session/protocol.py
// (documented in docs/protocol.md). tests/browser/test_static.py checks these lists against the Python models,
// so a message type, error code or close code added there fails the tests until it is mirrored here.

export const PROTOCOL_VERSION = 1;
export const OUTPUT_SAMPLE_RATE = 24000; // server → client PCM16 LE mono
export const DEFAULT_INPUT_SAMPLE_RATE = 16000; // StartMessage.sample_rate's default

// ClientMessage members.
export const CLIENT_MESSAGE_TYPES = ["start", "text", "interrupt", "reset", "configure", "get_history"];

// ServerMessage members.
export const SERVER_MESSAGE_TYPES = [
  "ready",
  "started",
  "vad",
  "transcript",
  "assistant",
  "audio_start",
  "audio_end",
  "interrupted",
  "history_cleared",
  "history",
  "resumed",
  "resume_token",
  "error",
  "turn_metrics",
];

// Every ErrorCode, in words a person can act on.
export const ERROR_TEXT = {
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
  llm_throttled: "The language model is busy (request limit reached). Wait a moment and try again.",
  stt_failed: "Speech recognition failed for that turn. Please say it again.",
  tts_failed: "Speech synthesis failed; the reply is shown as text only.",
  server_full: "The server is busy: every session slot is in use.",
  not_ready: "The server is still starting up.",
  idle_timeout: "Disconnected after a long time without activity.",
  session_expired: "The session reached its maximum length and was closed.",
  shutting_down: "The server is restarting.",
  internal: "Something went wrong on the server.",
  unauthorized: "This page could not prove it may start a session (missing or expired access). Reload the page.",
  forbidden_origin: "This page is not allowed to use the voice service.",
  rate_limited: "Too many requests in a short time. Wait a moment and try again.",
  too_many_sessions: "Too many open sessions from this user or network. Close another tab and try again.",
};

// ResumeFailureCode: why a resume token was not used (the `error` of a `resumed` message).
export const RESUME_FAILURE_TEXT = {
  expired: "the saved conversation was too old to continue",
  invalid: "the saved conversation could not be verified",
  foreign_key: "the saved conversation belongs to another deployment or an older key",
  oversized: "the saved conversation was too large",
  malformed: "the saved conversation was unreadable",
};

// CloseCode: the WebSocket close codes the server uses.
export const CLOSE_CODE = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  TRY_AGAIN_LATER: 1013,
  IDLE_TIMEOUT: 4000,
  SESSION_EXPIRED: 4001,
  UNAUTHORIZED: 4003,
};

// A close code → the error code that explains it (a close without a fatal `error` message before it).
export const CLOSE_REASON = {
  [CLOSE_CODE.GOING_AWAY]: "shutting_down",
  [CLOSE_CODE.POLICY_VIOLATION]: "audio_too_fast",
  [CLOSE_CODE.MESSAGE_TOO_BIG]: "frame_too_large",
  [CLOSE_CODE.INTERNAL_ERROR]: "internal",
  [CLOSE_CODE.TRY_AGAIN_LATER]: "server_full",
  [CLOSE_CODE.IDLE_TIMEOUT]: "idle_timeout",
  [CLOSE_CODE.SESSION_EXPIRED]: "session_expired",
  [CLOSE_CODE.UNAUTHORIZED]: "unauthorized",
};

export function errorText(code, fallback) {
  return ERROR_TEXT[code] || fallback || "Something went wrong.";
}

// Client → server control messages (optional fields left undefined are dropped by JSON.stringify).
export const clientMessage = {
  start: (sampleRate, voice, speed, resumeToken) => ({
    type: "start",
    sample_rate: sampleRate,
    voice: voice || undefined,
    speed,
    resume_token: resumeToken || undefined,
  }),
  text: (text) => ({ type: "text", text }),
  interrupt: () => ({ type: "interrupt" }),
  reset: () => ({ type: "reset" }),
  configure: (voice, speed) => ({ type: "configure", voice: voice || undefined, speed }),
};

// A server text frame → its message object, or null (logged) when it is not a JSON object with a type.
export function parseServerMessage(raw) {
  let msg;
  try {
    msg = JSON.parse(raw);
  } catch {
    console.warn("VoiceChat: unreadable control message", raw);
    return null;
  }
  if (msg === null || typeof msg !== "object" || typeof msg.type !== "string") {
    console.warn("VoiceChat: control message without a type", raw);
    return null;
  }
  return msg;
}
