// Piko Connector's window: routing between the four views and the live view model.

import { call, on } from "./api.js";
import { showAlert } from "./dom.js";
import { renderEndpoints } from "./endpoints.js";
import { loadInspector } from "./inspector.js";
import { loadLogs } from "./logs.js";
import { renderServers } from "./servers.js";
import { renderSettings } from "./settings.js";
import { apply, setRenderer } from "./store.js";

const VIEWS = ["endpoints", "inspector", "logs", "settings"];
const banner = document.getElementById("banner");

function route() {
  const name = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "endpoints";
  for (const v of VIEWS) {
    document.getElementById(`view-${v}`).hidden = v !== name;
    const link = document.getElementById(`nav-${v}`);
    if (v === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (name === "inspector") loadInspector();
  if (name === "logs") loadLogs();
}

/** Draw every part of the page that depends on the app's state. */
function render(view) {
  // A settings file that failed to load is shown, never hidden: the app runs on the last good state.
  showAlert(banner, view.banner ? { message: view.banner } : null);
  renderEndpoints(view);
  renderServers(view);
  renderSettings(view);
  document.body.dataset.ready = "true";
}

setRenderer(render);
window.addEventListener("hashchange", route);
route();

// Subscribe before the first snapshot so no change between the two is lost.
on("piko://view", apply).then(async () => {
  try {
    apply(await call("snapshot"));
  } catch (e) {
    showAlert(banner, e);
  }
});
