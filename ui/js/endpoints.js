// The endpoints view: one row per endpoint with its live state, and the add/edit panel.

import { call } from "./api.js";
import { runCountdowns, stateText } from "./countdown.js";
import { h, showAlert, toast } from "./dom.js";
import { openPanel, closePanel, clearErrors, showFieldError } from "./panel.js";
import { openSignIn } from "./servers.js";
import { apply } from "./store.js";

const list = document.getElementById("endpoint-list");
const firstRun = document.getElementById("first-run");
const note = document.getElementById("signed-in-note");
const alertEl = document.getElementById("endpoints-error");
const form = document.getElementById("endpoint-form");
const removeButton = document.getElementById("ep-remove");

const GLYPH = { ok: "●", warn: "▲", off: "○" };
let view = null;
let editing = null; // id of the endpoint being edited, null when adding

/** Redraw the list from the app's view model. Keeps focus on the row control it was on. */
export function renderEndpoints(next) {
  view = next;
  const focusedKey = document.activeElement?.dataset?.key;
  firstRun.hidden = next.endpoints.length > 0;
  document.getElementById("first-add").disabled = !next.servers.some((s) => s.signed_in);
  document.getElementById("first-sign-in").classList.toggle("primary", !next.servers.some((s) => s.signed_in));
  document.getElementById("first-add").classList.toggle("primary", next.servers.some((s) => s.signed_in));
  list.replaceChildren(...next.endpoints.map(row));
  runCountdowns(list);
  const signedIn = next.servers.filter((s) => s.signed_in);
  note.textContent = signedIn.length
    ? signedIn.map((s) => `Signed in to ${s.name} · token in ${s.token_store}`).join(" · ")
    : next.servers.length
      ? "Signed out. Sign in under Settings to connect."
      : "";
  if (focusedKey) list.querySelector(`[data-key="${CSS.escape(focusedKey)}"]`)?.focus();
}

function row(ep) {
  const copy = ep.url
    ? h("button", { type: "button", class: "small", "aria-label": `Copy URL of ${ep.id}`, dataset: { key: `copy:${ep.id}` }, onclick: () => copyUrl(ep) }, "Copy URL")
    : null;
  const toggle = h("input", {
    type: "checkbox",
    role: "switch",
    checked: ep.enabled,
    "aria-label": `${ep.enabled ? "Disable" : "Enable"} ${ep.id}`,
    dataset: { key: `toggle:${ep.id}`, endpoint: ep.id },
    onchange: (e) => setEnabled(ep.id, e.target.checked, e.target),
  });
  return h(
    "li",
    { class: "ep", dataset: { tone: ep.tone, endpoint: ep.id, state: ep.state_kind } },
    h("span", { class: "dot", "aria-hidden": "true" }, GLYPH[ep.tone] || "○"),
    h(
      "div",
      { class: "ep-main" },
      h("div", { class: "ep-line1" },
        h("span", { class: "ep-id" }, ep.id),
        h("span", { class: "ep-target" }, `→ ${ep.target}`),
        h("span", { class: "tag" }, ep.protocol)),
      h("div", { class: "ep-line2" },
        h("span", { class: "ep-state", dataset: countdown(ep) }, stateText(ep)),
        ep.url ? h("code", { class: "ep-url" }, ep.url) : null,
        copy),
    ),
    h("div", { class: "ep-actions" },
      h("button", { type: "button", class: "small", "aria-label": `Edit ${ep.id}`, dataset: { key: `edit:${ep.id}` }, onclick: () => openEdit(ep) }, "Edit"),
      h("label", { class: "switch", title: ep.enabled ? "On" : "Off" }, toggle, h("span", { class: "sr-only" }, ep.enabled ? "On" : "Off"))),
    ep.error ? h("div", { class: "ep-error" }, ep.error) : null,
  );
}

/** The countdown's data attribute, while the endpoint waits to reconnect. */
function countdown(ep) {
  return ep.state_kind === "reconnecting" && typeof ep.retry_at_ms === "number" ? { retryAt: String(ep.retry_at_ms) } : {};
}

async function copyUrl(ep) {
  try {
    await call("copy_text", { text: ep.url });
    toast(`Copied ${ep.url}`);
  } catch (e) {
    showAlert(alertEl, e);
  }
}

async function setEnabled(id, enabled, input) {
  showAlert(alertEl, null);
  try {
    apply(await call("set_endpoint_enabled", { id, enabled }));
  } catch (e) {
    input.checked = !enabled;
    showAlert(alertEl, e);
  }
}

function fillServers(selected) {
  const select = form.elements.server;
  select.replaceChildren(...(view?.servers || []).map((s) => h("option", { value: s.name, selected: s.name === selected }, `${s.name}${s.signed_in ? "" : " (signed out)"}`)));
}

/** Open the panel to add an endpoint (or sign in first when there is no server). */
export function openAdd() {
  if (!view?.servers.length) {
    openSignIn();
    return;
  }
  editing = null;
  form.reset();
  clearErrors(form);
  document.getElementById("ep-target-result").textContent = "";
  form.elements.id.disabled = false;
  fillServers(view.servers.find((s) => s.signed_in)?.name);
  removeButton.hidden = true;
  document.getElementById("ep-save").textContent = "Add endpoint";
  openPanel("Add endpoint", form);
}

function openEdit(ep) {
  editing = ep.id;
  form.reset();
  clearErrors(form);
  document.getElementById("ep-target-result").textContent = "";
  form.elements.id.value = ep.id;
  form.elements.target.value = ep.target;
  form.elements.protocol.value = ep.protocol;
  form.elements.enabled.checked = ep.enabled;
  fillServers(ep.server);
  removeButton.hidden = false;
  document.getElementById("ep-save").textContent = "Save changes";
  openPanel(`Edit ${ep.id}`, form);
}

function formValue() {
  return {
    id: form.elements.id.value.trim(),
    target: form.elements.target.value.trim(),
    protocol: form.elements.protocol.value,
    server: form.elements.server.value,
    enabled: form.elements.enabled.checked,
  };
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  clearErrors(form);
  const endpoint = formValue();
  const save = document.getElementById("ep-save");
  save.disabled = true;
  try {
    const next = editing === null
      ? await call("add_endpoint", { endpoint })
      : await call("update_endpoint", { id: editing, endpoint });
    closePanel();
    apply(next);
    toast(editing === null ? `Added ${endpoint.id}` : `Saved ${endpoint.id}`);
  } catch (err) {
    showFieldError(form, err);
  } finally {
    save.disabled = false;
  }
});

document.getElementById("ep-test").addEventListener("click", async () => {
  const out = document.getElementById("ep-target-result");
  out.className = "help";
  out.textContent = "Trying…";
  try {
    out.textContent = await call("test_target", { target: form.elements.target.value.trim(), protocol: form.elements.protocol.value });
    out.className = "help ok";
  } catch (err) {
    out.textContent = err.message;
    out.className = "help bad";
  }
});

removeButton.addEventListener("click", async () => {
  if (editing === null) return;
  try {
    const next = await call("remove_endpoint", { id: editing });
    toast(`Removed ${editing}`);
    closePanel();
    apply(next);
  } catch (err) {
    showFieldError(form, err);
  }
});

document.getElementById("ep-cancel").addEventListener("click", closePanel);
document.getElementById("add-endpoint").addEventListener("click", openAdd);
document.getElementById("first-add").addEventListener("click", openAdd);
document.getElementById("first-sign-in").addEventListener("click", () => openSignIn());
