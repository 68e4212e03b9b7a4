// Formatting shared by the views.

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return null;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

// Kokoro voice ids: first letter language, second gender (af_heart = American English, female).
const VOICE_LANG = {
  a: "US English",
  b: "UK English",
  j: "Japanese",
  z: "Mandarin",
  e: "Spanish",
  f: "French",
  h: "Hindi",
  i: "Italian",
  p: "Portuguese",
};

export function voiceLabel(name) {
  const m = /^([a-z])([fm])_(.+)$/.exec(name);
  if (!m || !VOICE_LANG[m[1]]) return name;
  const pretty = m[3].charAt(0).toUpperCase() + m[3].slice(1);
  return `${pretty} (${VOICE_LANG[m[1]]}, ${m[2] === "f" ? "female" : "male"})`;
}
