// Turn bookkeeping: which turn is awaiting or receiving its reply, whose audio is being accepted, and the
// rule "never play audio of an interrupted turn". Pure state, no DOM and no socket.

export const PENDING = "pending"; // a typed turn the server has not numbered yet

export class TurnTracker {
  constructor() {
    this.interrupted = new Set();
    this.audioTurn = null; // turn whose audio is being accepted (between audio_start and audio_end)
    this.lastTurnId = -1;
    this.busyTurn = null; // a user turn awaiting or receiving its reply (PENDING for a text not yet numbered)
  }

  // Any server message that names a turn.
  seen(turnId) {
    if (typeof turnId === "number" && turnId > this.lastTurnId) this.lastTurnId = turnId;
  }

  // A user turn awaits (or receives) its reply.
  get thinking() {
    return this.busyTurn !== null;
  }

  // A reply is awaited or its audio is arriving.
  get active() {
    return this.busyTurn !== null || this.audioTurn !== null;
  }

  isInterrupted(turnId) {
    return this.interrupted.has(turnId);
  }

  typed() {
    this.busyTurn = PENDING;
  }

  heard(turnId) {
    this.busyTurn = turnId;
  }

  replying(turnId) {
    if (this.busyTurn === null || this.busyTurn === PENDING) this.busyTurn = turnId;
  }

  // audio_start: false when the turn was interrupted (its audio is dropped).
  audioStarted(turnId) {
    if (this.interrupted.has(turnId)) {
      this.audioTurn = null;
      return false;
    }
    this.audioTurn = turnId;
    this.replying(turnId);
    return true;
  }

  // audio_end: true when it ends the audio being accepted.
  audioEnded(turnId) {
    if (this.audioTurn !== turnId) return false;
    this.audioTurn = null;
    return true;
  }

  // The turn a binary frame belongs to, or null when it must be dropped.
  audioTarget() {
    return this.audioTurn === null || this.interrupted.has(this.audioTurn) ? null : this.audioTurn;
  }

  finished(turnId) {
    if (this.busyTurn === turnId) this.busyTurn = null;
  }

  // Playback was flushed: no turn's audio is being accepted.
  flushed() {
    this.audioTurn = null;
  }

  markInterrupted(turnId) {
    this.interrupted.add(turnId);
    this.audioTurn = null;
    if (this.busyTurn === turnId || this.busyTurn === PENDING) this.busyTurn = null;
  }

  // The turn the person interrupts: the one awaiting its reply, else the newest the server named; -1 if none.
  toInterrupt() {
    return typeof this.busyTurn === "number" ? this.busyTurn : Math.max(this.lastTurnId, this.audioTurn ?? -1);
  }

  // The person interrupted: no reply is awaited any more.
  abandon() {
    this.busyTurn = null;
  }

  endAll() {
    this.busyTurn = null;
    this.audioTurn = null;
  }

  // A new connection: the server numbers its turns from 1 again.
  newSession() {
    this.interrupted.clear();
    this.lastTurnId = -1;
    this.endAll();
  }
}
