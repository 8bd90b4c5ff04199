// Small DOM helpers: build elements without innerHTML (no markup from data, ever).

/** Create an element: h("button", {class: "x", onclick: f}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Show an error (or clear it with null) in an alert element. */
export function showAlert(el, error) {
  if (!error) {
    el.hidden = true;
    el.textContent = "";
    return;
  }
  el.textContent = error.message || String(error);
  el.hidden = false;
}

let toastTimer = null;
/** A short confirmation at the bottom of the window ("Copied"). */
export function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 2200);
}

/** Human size: 1.2 KiB. */
export function size(bytes) {
  if (bytes === null || bytes === undefined) return "";
  if (bytes < 1024) return `${bytes} B`;
  const fixed = (n) => (Number.isInteger(n) ? String(n) : n.toFixed(1));
  if (bytes < 1024 * 1024) return `${fixed(bytes / 1024)} KiB`;
  return `${fixed(bytes / 1024 / 1024)} MiB`;
}

/** Human duration from milliseconds: 12 ms, 1.4 s. */
export function duration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

/** Local clock time of an RFC 3339 timestamp or epoch milliseconds. */
export function clock(t) {
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return String(t ?? "");
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}
