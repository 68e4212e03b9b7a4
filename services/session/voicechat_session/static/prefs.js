// The person's voice and speed, kept in localStorage across visits.

const PREFS_KEY = "voicechat.prefs";

export function loadPrefs() {
  try {
    return JSON.parse(localStorage.getItem(PREFS_KEY) || "{}") || {};
  } catch {
    return {};
  }
}

export function savePrefs(prefs) {
  try {
    localStorage.setItem(PREFS_KEY, JSON.stringify(prefs));
  } catch {
    // Storage disabled (private mode): preferences just do not persist.
  }
}
