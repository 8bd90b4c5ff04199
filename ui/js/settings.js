// Settings: start at login, start tunnels on launch, notifications, theme.

import { call } from "./api.js";
import { showAlert } from "./dom.js";
import { apply } from "./store.js";

const form = document.getElementById("prefs-form");
const alertEl = document.getElementById("settings-error");

/** Apply a theme preference to the page (system follows prefers-color-scheme). */
export function applyTheme(theme) {
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

/** Show the current preferences (without stealing focus from a control being used). */
export function renderSettings(view) {
  const p = view.preferences;
  form.elements.start_at_login.checked = p.start_at_login;
  form.elements.start_tunnels_on_launch.checked = p.start_tunnels_on_launch;
  form.elements.notify_on_disconnect.checked = p.notify_on_disconnect;
  form.elements.theme.value = p.theme;
  applyTheme(p.theme);
}

form.addEventListener("change", async () => {
  const preferences = {
    start_at_login: form.elements.start_at_login.checked,
    start_tunnels_on_launch: form.elements.start_tunnels_on_launch.checked,
    notify_on_disconnect: form.elements.notify_on_disconnect.checked,
    theme: form.elements.theme.value,
  };
  applyTheme(preferences.theme);
  showAlert(alertEl, null);
  try {
    apply(await call("set_preferences", { preferences }));
  } catch (e) {
    showAlert(alertEl, e);
    // Put the controls back to what is really stored.
    try { apply(await call("snapshot")); } catch { /* the alert already says what failed */ }
  }
});
