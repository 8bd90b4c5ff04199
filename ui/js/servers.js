// Servers: sign in (URL + token into the credential store) and sign out.

import { call } from "./api.js";
import { h, showAlert, toast } from "./dom.js";
import { openPanel, closePanel, clearErrors, showFieldError } from "./panel.js";
import { apply } from "./store.js";

const form = document.getElementById("signin-form");
const listEl = document.getElementById("server-list");
const statusEl = document.getElementById("server-status");
const alertEl = document.getElementById("settings-error");

/** Open the sign-in panel, optionally for a known server URL. */
export function openSignIn(url = "", publicUrl = "") {
  form.reset();
  clearErrors(form);
  form.elements.url.value = url;
  form.elements.public_url.value = publicUrl || "";
  openPanel(url ? `Sign in to ${url}` : "Sign in to a server", form);
  if (url) form.elements.token.focus();
}

/** Redraw the server list (settings) and the sidebar's connection summary. */
export function renderServers(view) {
  document.getElementById("si-store").textContent = view.token_store;
  listEl.replaceChildren(
    ...(view.servers.length
      ? view.servers.map((s) =>
          h("li", {},
            h("div", {},
              h("strong", {}, s.name),
              h("div", { class: "muted" }, s.url),
              h("div", { class: "muted" }, s.signed_in ? `Signed in · token in ${s.token_store}` : "Signed out")),
            s.signed_in
              ? h("button", { type: "button", "aria-label": `Sign out of ${s.name}`, onclick: () => signOut(s.name) }, "Sign out")
              : h("button", { type: "button", class: "primary", onclick: () => openSignIn(s.url, s.public_url) }, "Sign in")))
      : [h("li", { class: "muted" }, "No server yet.")]),
  );
  const connected = view.endpoints.filter((e) => e.tone === "ok").length;
  const signed = view.servers.filter((s) => s.signed_in);
  statusEl.replaceChildren(
    signed.length ? h("strong", {}, signed.map((s) => s.name).join(", ")) : h("strong", {}, "Not signed in"),
    view.endpoints.length
      ? h("span", { class: "summary" },
          h("span", { class: "dot", dataset: { dot: view.summary_dot }, "aria-hidden": "true" }, view.summary_dot),
          ` ${connected} of ${view.endpoints.length} connected`)
      : h("span", {}, "No endpoints"),
  );
}

async function signOut(name) {
  showAlert(alertEl, null);
  try {
    apply(await call("sign_out", { server: name }));
    toast(`Signed out of ${name}`);
  } catch (e) {
    showAlert(alertEl, e);
  }
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  clearErrors(form);
  const submit = document.getElementById("si-submit");
  submit.disabled = true;
  try {
    const url = form.elements.url.value.trim();
    const publicUrl = form.elements.public_url.value.trim();
    const next = await call("sign_in", { url, publicUrl: publicUrl || null, token: form.elements.token.value.trim() });
    form.elements.token.value = "";
    closePanel();
    apply(next);
    toast(`Signed in to ${url}`);
  } catch (err) {
    showFieldError(form, err);
  } finally {
    submit.disabled = false;
  }
});
document.getElementById("si-cancel").addEventListener("click", closePanel);
document.getElementById("add-server").addEventListener("click", () => openSignIn());
