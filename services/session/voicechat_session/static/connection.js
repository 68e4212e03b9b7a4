// The WebSocket to the session service: which URL, reconnecting with backoff and a countdown, and which
// closes deserve no automatic retry. Knows nothing of the page: it reports through the hooks it is given.

import { CLOSE_CODE, CLOSE_REASON, errorText, parseServerMessage } from "./protocol.js";

const BACKOFF_S = [1, 2, 4, 8, 15, 30];
const MAX_SEND_BACKLOG_BYTES = 256 * 1024; // a stalled socket drops mic audio instead of queueing minutes of it

// The status line while waiting to reconnect.
const RECONNECT_WHY = { server_full: "Server busy", shutting_down: "Server restarting", not_ready: "Server starting" };

// Closes after which reconnecting on our own would only repeat the problem: wait for the person.
const NO_AUTO_RECONNECT = new Set([
  "idle_timeout",
  "session_expired",
  "audio_too_fast",
  "frame_too_large",
  "forbidden_origin",
]);

// The socket's URL: the page's own server, relative to the page (so the client works behind a path prefix),
// wss:// whenever the page is https. An `override` (the page's ?ws=) may only pick another path on that same
// server: a crafted link must never stream the microphone to a foreign host under our permission.
// Returns {url, rejected}: `rejected` is the override when it was refused.
export function socketUrl(pageUrl, override) {
  const page = new URL(pageUrl);
  const protocol = page.protocol === "https:" ? "wss:" : "ws:";
  const fallback = new URL("ws", page);
  fallback.protocol = protocol;
  if (!override) return { url: fallback.href, rejected: null };
  let wanted;
  try {
    wanted = new URL(override, page);
  } catch {
    return { url: fallback.href, rejected: override };
  }
  if (wanted.protocol === "http:" || wanted.protocol === "https:") {
    wanted.protocol = wanted.protocol === "https:" ? "wss:" : "ws:";
  }
  const sameOrigin = wanted.protocol === protocol && wanted.host === page.host && !wanted.username && !wanted.password;
  return sameOrigin ? { url: wanted.href, rejected: null } : { url: fallback.href, rejected: override };
}

// An access token for each new socket, when the service requires one (its /api/info says so): GET from the
// app backend's same-origin `token_url` (cookies sent), answered with JSON {"token": "<jwt>"}. The token
// travels as a WebSocket subprotocol, never in the URL. Resolves null when no token is needed.
export function tokenSource(baseUri, fetchImpl = fetch) {
  let info = null;
  return async () => {
    info ??= fetchImpl(new URL("api/info", baseUri)).then((r) => (r.ok ? r.json() : {}));
    const auth = (await info).auth;
    if (!auth || !auth.required) return null;
    if (!auth.token_url) throw new Error("the server requires an access token and names no token URL");
    const url = new URL(auth.token_url, baseUri);
    if (url.origin !== new URL(baseUri).origin) throw new Error("the token URL is not on this page's origin");
    const response = await fetchImpl(url, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error(`the token URL answered ${response.status}`);
    const body = await response.json();
    if (typeof body.token !== "string" || !body.token) throw new Error("the token URL gave no token");
    return body.token;
  };
}

// hooks: status(state, text) · message(msg) · audio(ArrayBuffer) · closed() · error(text, code, message, connection)
// `state` mirrors the page state: reconnects and reconnectInSeconds are written here.
// `getToken` (optional): async () => token or null, asked before each new socket (see tokenSource).
export class Connection {
  constructor(url, state, hooks, getToken = null) {
    this.url = url;
    this.state = state;
    this.hooks = hooks;
    this.getToken = getToken;
    this.ws = null;
    this.serial = 0; // events of a replaced socket are ignored
    this.userClosed = false;
    this.fatalCode = null; // error code of a fatal error message, explains the close that follows
    this.attempt = 0;
    this.ready = false; // the server's `ready` arrived on this socket
    this.reconnectTimer = null;
    this.countdownTimer = null;
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  send(message) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  // Microphone audio: dropped (false) rather than queued when the socket is closed or stalls.
  sendAudio(pcm) {
    if (!this.isOpen || this.ws.bufferedAmount > MAX_SEND_BACKLOG_BYTES) return false;
    this.ws.send(pcm);
    return true;
  }

  connect() {
    clearTimeout(this.reconnectTimer);
    clearInterval(this.countdownTimer);
    this.reconnectTimer = this.countdownTimer = null;
    this.state.reconnectInSeconds = null;
    if (this.ws && (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING)) return;
    this.userClosed = false;
    this.fatalCode = null;
    this.hooks.status("connecting", this.attempt > 0 ? "Reconnecting…" : "Connecting…");
    const serial = ++this.serial;
    if (!this.getToken) {
      this.open(serial, undefined);
      return;
    }
    this.getToken().then(
      (token) => {
        if (serial === this.serial && !this.userClosed) this.open(serial, token ? ["voicechat", `token.${token}`] : undefined);
      },
      (err) => {
        if (serial !== this.serial) return;
        this.hooks.error(`Cannot get an access token: ${err.message}`);
        this.scheduleReconnect(null);
      },
    );
  }

  open(serial, protocols) {
    let socket;
    try {
      socket = new WebSocket(this.url, protocols);
    } catch (err) {
      this.hooks.error(`Cannot open the connection: ${err.message}`);
      this.hooks.status("offline", "Offline");
      return;
    }
    socket.binaryType = "arraybuffer";
    this.ws = socket;
    socket.onmessage = (event) => {
      if (serial !== this.serial) return;
      if (typeof event.data !== "string") {
        this.hooks.audio(event.data);
        return;
      }
      const msg = parseServerMessage(event.data);
      if (msg) this.hooks.message(msg);
    };
    socket.onclose = (event) => {
      if (serial !== this.serial) return;
      this.onClose(event);
    };
  }

  // The server's `ready`: the session exists. True when this is a new session after a lost one.
  sessionReady() {
    const reconnected = this.attempt > 0 || this.state.reconnects > 0;
    this.attempt = 0;
    this.ready = true;
    return reconnected;
  }

  // A fatal `error` message: the close that follows is explained by it, not by the close code.
  fatal(code) {
    this.fatalCode = code;
  }

  reconnectNow() {
    this.attempt = Math.max(1, this.attempt);
    this.connect();
  }

  // The page goes away: close without reconnecting.
  close() {
    this.userClosed = true;
    this.ws?.close(1000, "page closed");
  }

  onClose(event) {
    const wasReady = this.ready;
    const fatalCode = this.fatalCode;
    this.ready = false;
    this.ws = null;
    this.hooks.closed();
    if (this.userClosed) {
      this.hooks.status("idle", "Not connected");
      return;
    }
    const code = this.fatalCode || CLOSE_REASON[event.code] || null;
    // A fatal `error` message was shown already; otherwise the close code explains the drop.
    if (code && !this.fatalCode) this.hooks.error(errorText(code, event.reason), code, event.reason, true);
    if (code && NO_AUTO_RECONNECT.has(code)) {
      this.hooks.status("offline", "Disconnected");
      return;
    }
    if (wasReady && code !== "server_full") this.attempt = 0;
    // A session pod draining (rollout, scale-down) closes its sessions with "going away" after handing each
    // its latest resume token: reconnect at once and continue on another pod. Only after a session was
    // ready: a pod that refuses new sessions while draining gets the usual backoff, never a tight loop.
    if (wasReady && (event.code === CLOSE_CODE.GOING_AWAY || fatalCode === "shutting_down")) {
      this.state.reconnects += 1;
      this.attempt = 1;
      this.connect();
      return;
    }
    this.scheduleReconnect(code);
  }

  scheduleReconnect(code) {
    const delay = BACKOFF_S[Math.min(this.attempt, BACKOFF_S.length - 1)];
    this.attempt += 1;
    const why = RECONNECT_WHY[code] || "Connection lost";
    const deadline = performance.now() + delay * 1000;
    const tick = () => {
      const left = Math.max(1, Math.ceil((deadline - performance.now()) / 1000));
      this.state.reconnectInSeconds = left;
      this.hooks.status("reconnecting", `${why}. Reconnecting in ${left} s…`);
    };
    tick();
    this.countdownTimer = setInterval(tick, 250);
    this.reconnectTimer = setTimeout(() => {
      this.state.reconnects += 1;
      this.connect();
    }, delay * 1000);
  }
}
