// The page's own view of itself, mirrored on `window.voicechat` so that tests (and curious people in the
// console) can read it: connection state, counters from the player worklet, transcripts. The modules write
// the fields of their concern; nothing reads them back from the DOM.

import { OUTPUT_SAMPLE_RATE } from "./protocol.js";

export function createState() {
  return {
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
    outputSampleRate: OUTPUT_SAMPLE_RATE,
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
    lastError: null, // {code, message, text, connection}
    errors: [],
    reconnects: 0,
    resumeSent: 0, // `start` messages that carried a resume token
    resumeOutcomes: [], // per `resumed`: "ok" or its error code
    restoredMessages: [], // the conversation of the last successful resume
    reconnectInSeconds: null,
    messageCounts: {},
    socketUrl: null, // where the page connects (always its own server)
    rejectedSocketUrl: null, // a ?ws= override that pointed elsewhere and was ignored
  };
}
