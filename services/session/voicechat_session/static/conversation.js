// The conversation: one <article class="turn"> per turn with the person's words, the assistant's streamed
// reply and the turn's latency figures; notes between turns.

import { fmtMs } from "./format.js";

const METRIC_PARTS = [
  ["endpointing_ms", "End of turn", "Silence after your last word until the end of your turn was decided"],
  ["stt_ms", "STT", "Speech-to-text time for your utterance"],
  ["llm_ttft_ms", "LLM first token", "Time until the language model produced its first token"],
  ["llm_first_phrase_ms", "LLM first phrase", "Time until the language model completed the first phrase"],
  ["tts_first_chunk_ms", "TTS first phrase", "Time to synthesise the first phrase"],
  ["time_to_first_audio_ms", "First audio", "From the end of your turn to the first audio sent"],
];

// The speculative start (work begun at a short pause, before the end of turn was decided).
const SPECULATION_TEXT = {
  hit: ["early start", "The reply started at a pause before your turn was over, and was used"],
  miss: ["early start missed", "A reply started at a pause was dropped because you went on speaking"],
};

// Screen readers announce a message once it is complete (aria-busy), not every streamed word.
function setStreaming(body, on, cls = "streaming") {
  body.classList.toggle(cls, on);
  if (on) body.setAttribute("aria-busy", "true");
  else body.removeAttribute("aria-busy");
}

export class ConversationView {
  constructor(root, emptyState) {
    this.root = root;
    this.emptyState = emptyState;
    this.turnViews = new Map();
    this.pendingTextView = null; // a typed turn's bubble until the server numbers the turn
  }

  hasTurns() {
    return this.root.querySelector(".turn") !== null;
  }

  newTurnElement() {
    this.emptyState.hidden = true;
    const article = document.createElement("article");
    article.className = "turn";
    this.root.appendChild(article);
    return article;
  }

  turnView(turnId) {
    let view = this.turnViews.get(turnId);
    if (view) return view;
    if (this.pendingTextView) {
      // The first numbered message after a typed turn belongs to it.
      view = this.pendingTextView;
      this.pendingTextView = null;
    } else {
      view = { root: this.newTurnElement(), user: null, assistant: null, metrics: null };
    }
    view.root.dataset.turn = String(turnId);
    this.turnViews.set(turnId, view);
    return view;
  }

  // A typed turn, shown at once; the server numbers it with its first message.
  addTypedTurn(text) {
    this.pendingTextView = { root: this.newTurnElement(), user: null, assistant: null, metrics: null };
    this.setUserText(this.pendingTextView, text, false);
  }

  message(view, role) {
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

  setUserText(view, text, partial) {
    if (!view.user) view.user = this.message(view, "user");
    const body = view.user.querySelector(".body");
    body.textContent = text || (partial ? "…" : "(nothing heard)");
    setStreaming(body, partial, "partial");
    this.scrollToEnd();
  }

  transcript(turnId, text, final) {
    this.setUserText(this.turnView(turnId), text, !final);
  }

  // A final transcript without words: the server skips the turn, so the page forgets its bubble.
  dropSilentTurn(turnId) {
    const view = this.turnViews.get(turnId);
    if (view && !view.assistant) {
      view.root.remove();
      this.turnViews.delete(turnId);
    }
  }

  assistantBody(view) {
    if (!view.assistant) view.assistant = this.message(view, "assistant");
    return view.assistant.querySelector(".body");
  }

  // A reply delta (appended, streaming) or the final reply (the whole text as spoken).
  assistant(turnId, text, final) {
    const body = this.assistantBody(this.turnView(turnId));
    if (final) {
      if (text) body.textContent = text;
      setStreaming(body, false);
    } else {
      body.textContent += text;
      setStreaming(body, true);
    }
    this.scrollToEnd();
  }

  renderMetrics(msg) {
    const view = this.turnView(msg.turn_id);
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
      const figure = document.createElement("b");
      figure.textContent = value;
      part.append(`${label} `, figure);
      view.metrics.appendChild(part);
    }
    const speculation = SPECULATION_TEXT[msg.speculation];
    if (speculation) {
      const part = document.createElement("span");
      part.title = speculation[1];
      part.dataset.metric = "speculation";
      if (msg.speculation_head_start_ms != null) {
        const figure = document.createElement("b");
        figure.textContent = fmtMs(msg.speculation_head_start_ms);
        part.append(`${speculation[0]} `, figure);
      } else {
        part.append(speculation[0]);
      }
      view.metrics.appendChild(part);
    }
    if (msg.playback_stalls > 0) {
      // Only when it happened: a gap in the reply's audio is worth showing, its absence is the norm.
      const part = document.createElement("span");
      part.title = "Gaps in the reply's audio while the next phrase was still being synthesised";
      part.dataset.metric = "playback_stalls";
      const figure = document.createElement("b");
      figure.textContent = fmtMs(msg.playback_stall_ms);
      part.append(`${msg.playback_stalls} audio gap${msg.playback_stalls === 1 ? "" : "s"} `, figure);
      view.metrics.appendChild(part);
    }
    if (msg.interrupted) view.root.classList.add("interrupted");
    this.scrollToEnd();
  }

  markInterrupted(turnId) {
    const view = this.root.querySelector(`.turn[data-turn="${turnId}"]`);
    if (view) {
      view.classList.add("interrupted");
      const body = view.querySelector(".msg.assistant .body");
      if (body) setStreaming(body, false);
    }
  }

  // No reply streams any more (error, disconnect, reset).
  endStreaming() {
    this.root.querySelectorAll(".body.streaming").forEach((b) => setStreaming(b, false));
  }

  addNote(text) {
    this.emptyState.hidden = true;
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = text;
    this.root.appendChild(note);
    this.scrollToEnd();
  }

  scrollToEnd() {
    this.root.scrollTop = this.root.scrollHeight;
  }

  // A new connection numbers its turns from 1 again: earlier turns stay on screen but are no longer
  // addressed by their numbers.
  newSession() {
    for (const [turnId, view] of this.turnViews) {
      view.root.dataset.turn = `earlier-${turnId}`;
    }
    this.turnViews.clear();
  }

  // The restored conversation of a resumed session (a reload shows it again): user/assistant messages.
  showEarlier(messages) {
    let view = null;
    for (const { role, content } of messages) {
      if (role !== "user" && role !== "assistant") continue;
      if (role === "user" || view === null || view.assistant) {
        view = { root: this.newTurnElement(), user: null, assistant: null, metrics: null };
        view.root.classList.add("earlier");
      }
      if (role === "user") this.setUserText(view, content, false);
      else this.assistantBody(view).textContent = content;
    }
    this.scrollToEnd();
  }

  clear() {
    this.turnViews.clear();
    this.pendingTextView = null;
    for (const node of [...this.root.children]) {
      if (node !== this.emptyState) node.remove();
    }
    this.emptyState.hidden = false;
  }
}
