// The conversation's resume token: the newest one the server sent, kept for this tab (sessionStorage, so a
// reload continues the conversation and two tabs never share one). Sent in `start` after every reconnect;
// `reset` forgets it. The token is opaque: only the server can read it.

const TOKEN_KEY = "voicechat.resumeToken";

export class ResumeStore {
  constructor(storage = globalThis.sessionStorage) {
    this.storage = storage;
    this.memory = null; // storage disabled (private mode): still survives reconnects, not reloads
  }

  get token() {
    try {
      return this.storage?.getItem(TOKEN_KEY) || this.memory;
    } catch {
      return this.memory;
    }
  }

  keep(token) {
    if (typeof token !== "string" || !token) return;
    this.memory = token;
    try {
      this.storage?.setItem(TOKEN_KEY, token);
    } catch {
      // Storage full or disabled: the in-memory copy still serves reconnects.
    }
  }

  forget() {
    this.memory = null;
    try {
      this.storage?.removeItem(TOKEN_KEY);
    } catch {
      // Nothing stored.
    }
  }
}
