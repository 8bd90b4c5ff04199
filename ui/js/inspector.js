// The inspector: recent requests (live, newest first, pausable) and one exchange in detail,
// with replay and edit-and-replay.

import { call, on } from "./api.js";
import { h, showAlert, size, duration, clock } from "./dom.js";

const rows = document.getElementById("exchange-rows");
const empty = document.getElementById("inspect-empty");
const detail = document.getElementById("exchange-detail");
const filterEl = document.getElementById("inspect-filter");
const pauseButton = document.getElementById("inspect-pause");
const alertEl = document.getElementById("inspector-error");

const MAX_ROWS = 500;
let exchanges = [];
let held = [];
let paused = false;
let selected = null;
let loaded = false;

/** Load the recent requests once (then events keep the list current). */
export async function loadInspector() {
  if (loaded) return;
  try {
    exchanges = await call("inspector_list", {});
    loaded = true;
    showAlert(alertEl, null);
    draw();
  } catch (e) {
    showAlert(alertEl, e);
  }
}

function matches(x, filter) {
  if (!filter) return true;
  const f = filter.toLowerCase();
  return [x.path, x.method, String(x.status ?? ""), x.endpoint].some((v) => String(v).toLowerCase().includes(f));
}

function statusClass(status) {
  return status ? `status s${String(status)[0]}` : "status s5";
}

function draw() {
  const filter = filterEl.value.trim();
  const shown = exchanges.filter((x) => matches(x, filter));
  empty.hidden = shown.length > 0;
  empty.textContent = exchanges.length ? "No request matches the filter." : "No requests yet. Requests through your endpoints appear here as they happen.";
  rows.replaceChildren(...shown.map((x) =>
    h("tr", {
      tabindex: "0",
      "aria-selected": x.id === selected ? "true" : "false",
      dataset: { id: x.id },
      onclick: () => select(x.id),
      onkeydown: (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(x.id); }
        if (e.key === "ArrowDown") e.currentTarget.nextElementSibling?.focus();
        if (e.key === "ArrowUp") e.currentTarget.previousElementSibling?.focus();
      },
    },
    h("td", {}, clock(x.started_at)),
    h("td", {}, x.method),
    h("td", { class: "path", title: `${x.endpoint} ${x.path}` }, x.replay_of ? `↻ ${x.path}` : x.path),
    h("td", {}, h("span", { class: statusClass(x.status) }, x.status ?? "failed")),
    h("td", { class: "num" }, duration(x.duration_ms)),
    h("td", { class: "num" }, size(x.response_size)))));
  pauseButton.textContent = paused ? (held.length ? `Resume (${held.length} new)` : "Resume") : "Pause";
  pauseButton.setAttribute("aria-pressed", String(paused));
}

function add(summary) {
  if (paused) {
    held.unshift(summary);
  } else {
    exchanges.unshift(summary);
    exchanges.length = Math.min(exchanges.length, MAX_ROWS);
  }
  draw();
}

async function select(id) {
  selected = id;
  draw();
  try {
    showAlert(alertEl, null);
    renderDetail(await call("inspector_get", { id }));
  } catch (e) {
    showAlert(alertEl, e);
  }
}

function headerTable(headers) {
  return h("table", { class: "headers" },
    h("tbody", {}, headers.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v)))));
}

/** A classic hex dump (offset, 16 bytes, ASCII) of base64 data, at most `limit` bytes. */
function hexDump(b64, limit = 4096) {
  const raw = atob(b64);
  const lines = [];
  for (let off = 0; off < Math.min(raw.length, limit); off += 16) {
    const chunk = raw.slice(off, off + 16);
    const hex = [...chunk].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join(" ");
    const ascii = [...chunk].map((c) => (c >= " " && c <= "~" ? c : ".")).join("");
    lines.push(`${off.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${ascii}`);
  }
  if (raw.length > limit) lines.push(`… ${raw.length - limit} more bytes captured`);
  return lines.join("\n");
}

function bodyView(body) {
  if (!body || body.size === 0) return h("p", { class: "empty-small" }, "No body.");
  const parts = [];
  if (body.encoding === "base64") {
    parts.push(h("p", { class: "detail-meta" }, `Binary body, ${size(body.size)} (hex view)`));
    let dump;
    try { dump = hexDump(body.data); } catch { dump = body.data; }
    parts.push(h("pre", { class: "body", "aria-label": "Body (hex)" }, dump));
  } else {
    let text = body.data ?? "";
    try {
      if (/^\s*[[{]/.test(text)) text = JSON.stringify(JSON.parse(text), null, 2);
    } catch { /* not JSON (or cut at the limit): show it as it is */ }
    parts.push(h("pre", { class: "body", "aria-label": "Body" }, text));
  }
  if (body.truncated) parts.push(h("p", { class: "note" }, `Truncated at ${size(body.captured)} (the whole body was ${size(body.size)}).`));
  return parts;
}

function renderDetail(x) {
  let tab = "response";
  const tabs = h("div", { class: "tabs", role: "tablist" });
  const pane = h("div", { role: "tabpanel" });
  const showTab = (name) => {
    tab = name;
    for (const b of tabs.children) b.setAttribute("aria-selected", String(b.dataset.tab === name));
    const side = x[name];
    pane.replaceChildren(
      ...(side
        ? [
            side.headers_dropped ? h("p", { class: "note" }, "Headers not kept: the inspector's memory was full.") : null,
            headerTable(side.headers),
            bodyView(side.body),
          ].flat().filter(Boolean)
        : [h("p", { class: "empty-small" }, x.error ? `No response: ${x.error}` : "No response.")]),
    );
  };
  for (const name of ["request", "response"]) {
    tabs.append(h("button", { type: "button", role: "tab", dataset: { tab: name }, onclick: () => showTab(name) }, name === "request" ? "Request" : "Response"));
  }
  detail.replaceChildren(
    h("div", { class: "detail-head" },
      h("span", { class: "detail-title" }, `${x.method} ${x.path}`),
      h("div", { class: "toolbar" },
        h("button", { type: "button", id: "replay", class: "primary", disabled: x.kind === "websocket", onclick: () => replay(x, null) }, "Replay"),
        h("button", { type: "button", id: "edit-replay", disabled: x.kind === "websocket", onclick: () => editForm(x) }, "Edit and replay"))),
    h("p", { class: "detail-meta" },
      h("span", { class: statusClass(x.status) }, x.status ?? "failed"), " · ", x.endpoint, " · ", clock(x.started_at), " · ", duration(x.duration_ms),
      x.replay_of ? ` · replay of #${x.replay_of}` : "",
      x.error ? ` · ${x.error}` : "",
      x.websocket ? ` · WebSocket: ${x.websocket.frames_in} frames in (${size(x.websocket.bytes_in)}), ${x.websocket.frames_out} out (${size(x.websocket.bytes_out)})${x.websocket.closed ? "" : ", open"}` : ""),
    tabs,
    pane,
  );
  showTab(tab);
}

function editForm(x) {
  const form = h("form", { class: "replay-form", "aria-label": "Edit and replay" },
    h("div", { class: "row" }, h("label", { for: "rp-method" }, "Method"), h("input", { id: "rp-method", name: "method", value: x.method })),
    h("div", { class: "row" }, h("label", { for: "rp-path" }, "Path"), h("input", { id: "rp-path", name: "path", value: x.path, spellcheck: "false" })),
    h("label", { for: "rp-headers" }, "Headers (one “Name: value” per line)"),
    h("textarea", { id: "rp-headers", name: "headers", rows: "5", spellcheck: "false" }, x.request.headers.map(([k, v]) => `${k}: ${v}`).join("\n")),
    h("label", { for: "rp-body" }, "Body"),
    h("textarea", { id: "rp-body", name: "body", rows: "6", spellcheck: "false" }, x.request.body?.encoding === "base64" ? "" : (x.request.body?.data ?? "")),
    h("p", { class: "error", "data-field": "" }),
    h("div", { class: "toolbar" },
      h("button", { type: "submit", class: "primary", id: "rp-send" }, "Send"),
      h("button", { type: "button", onclick: () => select(x.id) }, "Cancel")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const headers = [];
    for (const line of form.elements.headers.value.split("\n")) {
      if (!line.trim()) continue;
      const i = line.indexOf(":");
      if (i <= 0) {
        form.querySelector(".error").textContent = `header line "${line}" has no "Name:" part`;
        return;
      }
      headers.push([line.slice(0, i).trim(), line.slice(i + 1).trim()]);
    }
    replay(x, { method: form.elements.method.value.trim(), path: form.elements.path.value.trim(), headers, body: form.elements.body.value }, form);
  });
  detail.replaceChildren(h("div", { class: "detail-head" }, h("span", { class: "detail-title" }, `Edit and replay ${x.method} ${x.path}`)), form);
  form.elements.method.focus();
}

async function replay(x, edit, form) {
  showAlert(alertEl, null);
  try {
    // The new exchange (flattened: it is its own summary), linked to the original.
    const fresh = await call("inspector_replay", { id: x.id, edit });
    if (!exchanges.some((e) => e.id === fresh.id)) add(fresh);
    selected = fresh.id;
    draw();
    renderDetail(fresh);
  } catch (e) {
    if (form) form.querySelector(".error").textContent = e.message;
    else showAlert(alertEl, e);
  }
}

filterEl.addEventListener("input", draw);
pauseButton.addEventListener("click", () => {
  paused = !paused;
  if (!paused) {
    exchanges = [...held, ...exchanges].slice(0, MAX_ROWS);
    held = [];
  }
  draw();
});
on("piko://exchange", (summary) => {
  if (loaded && !exchanges.some((e) => e.id === summary.id)) add(summary);
});
