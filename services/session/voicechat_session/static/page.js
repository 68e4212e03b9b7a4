// The page around the conversation: connection status, error banner, activity pill and microphone level,
// the buttons' states, voice settings and the session line. Writes the DOM only; decisions live in main.js.

import { fmtMs, voiceLabel } from "./format.js";

const $ = (id) => document.getElementById(id);

export class PageView {
  constructor() {
    this.el = {
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
      settings: $("settings"),
      voice: $("voice"),
      speed: $("speed"),
      speedValue: $("speed-value"),
      sessionInfo: $("session-info"),
    };
  }

  showConnection(state, text) {
    const el = this.el;
    el.connection.dataset.state = state;
    if (el.connectionText.textContent !== text) el.connectionText.textContent = text; // no repeated announcements
    el.reconnectNow.hidden = !(state === "reconnecting" || state === "offline");
  }

  showError(text) {
    this.el.errorText.textContent = text;
    this.el.error.hidden = false;
  }

  clearError() {
    this.el.error.hidden = true;
    this.el.errorText.textContent = "";
  }

  get errorShown() {
    return !this.el.error.hidden;
  }

  showActivity(activity, text) {
    this.el.activity.dataset.activity = activity;
    if (this.el.activityText.textContent !== text) this.el.activityText.textContent = text;
  }

  showControls(micOn, canInterrupt) {
    const el = this.el;
    el.start.setAttribute("aria-pressed", String(micOn));
    el.start.classList.toggle("live", micOn);
    el.startLabel.textContent = micOn ? "Stop" : "Start";
    el.start.setAttribute("aria-label", micOn ? "Stop the microphone" : "Start the microphone");
    el.interrupt.disabled = !canInterrupt;
  }

  setMicLevel(level) {
    this.el.micLevelBar.style.transform = `scaleX(${level.toFixed(3)})`;
    this.el.micLevel.setAttribute("aria-valuenow", String(Math.round(level * 100)));
  }

  showVoiceOptions(voices) {
    this.el.voice.replaceChildren(
      ...voices.map((name) => {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = voiceLabel(name);
        return option;
      }),
    );
  }

  showVoiceSettings(voice, speed) {
    const el = this.el;
    if (voice) {
      if (![...el.voice.options].some((o) => o.value === voice)) {
        el.voice.appendChild(new Option(voiceLabel(voice), voice));
      }
      el.voice.value = voice;
    }
    el.speed.value = String(speed);
    this.showSpeed(speed);
  }

  // While the slider moves (the server hears of it on release).
  showSpeed(speed) {
    const value = Number(speed).toFixed(2);
    this.el.speedValue.textContent = `${value}×`;
    this.el.speed.setAttribute("aria-valuetext", `${value} times`);
  }

  showSessionInfo(msg) {
    const parts = [`Session ${String(msg.session_id).slice(0, 8)}`];
    if (msg.llm_model) {
      const warm = msg.llm_warm_ttft_ms != null ? ` (warm first token ${fmtMs(msg.llm_warm_ttft_ms)})` : "";
      parts.push(`LLM ${msg.llm_model}${warm}`);
    }
    if (typeof msg.connect_ms === "number") parts.push(`ready in ${fmtMs(msg.connect_ms)}`);
    if (msg.sharing) parts.push(msg.sharing === "pod" ? "models shared per pod" : "models loaded per connection");
    this.el.sessionInfo.textContent = parts.join(" · ");
  }

  clearSessionInfo() {
    this.el.sessionInfo.textContent = "";
  }
}
