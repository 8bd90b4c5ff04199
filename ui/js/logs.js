// The live log: the recent tail from the core, then one event per new line.

import { call, on } from "./api.js";
import { h, showAlert, toast, clock } from "./dom.js";

const box = document.getElementById("log-lines");
const levelEl = document.getElementById("log-level");
const searchEl = document.getElementById("log-search");
const statusEl = document.getElementById("logs-status");
const alertEl = document.getElementById("logs-error");

const RANK = { error: 0, warn: 1, info: 2, debug: 3, trace: 4 };
const MAX_LINES = 2000;
let lines = [];
let loaded = false;

/** Load the recent log tail once (events keep it current afterwards). */
export async function loadLogs() {
  if (loaded) return;
  try {
    const tail = await call("logs_tail", { limit: 500 });
    lines = tail.lines.map(normal);
    statusEl.textContent = `Log files: ${tail.folder}`;
    loaded = true;
    draw();
  } catch (e) {
    showAlert(alertEl, e);
  }
}

/** Levels arrive as ERROR/WARN/...; the filter and styles use lower case. */
function normal(line) {
  return { ...line, level: String(line.level).toLowerCase() };
}

function visible(line) {
  if ((RANK[line.level] ?? 2) > RANK[levelEl.value]) return false;
  const q = searchEl.value.trim().toLowerCase();
  return !q || line.message.toLowerCase().includes(q) || line.target.toLowerCase().includes(q);
}

function lineEl(line) {
  return h("div", { class: "log-line", dataset: { level: line.level } },
    h("span", { class: "ts" }, clock(line.time)), " ",
    h("span", { class: "lvl" }, line.level.toUpperCase()), " ",
    h("span", { class: "target" }, line.context ? `${line.context} ${line.target}` : line.target), " ",
    line.message);
}

function atBottom() {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 24;
}

function draw() {
  const stick = atBottom();
  box.replaceChildren(...lines.filter(visible).map(lineEl));
  if (!box.children.length) box.append(h("p", { class: "empty-small" }, lines.length ? "No line matches." : "Nothing logged yet."));
  if (stick) box.scrollTop = box.scrollHeight;
}

on("piko://log", (raw) => {
  if (!loaded) return;
  const line = normal(raw);
  lines.push(line);
  if (lines.length > MAX_LINES) lines.splice(0, lines.length - MAX_LINES);
  if (visible(line)) {
    const stick = atBottom();
    box.querySelector(".empty-small")?.remove();
    box.append(lineEl(line));
    if (stick) box.scrollTop = box.scrollHeight;
  }
});

levelEl.addEventListener("change", draw);
searchEl.addEventListener("input", draw);
document.getElementById("open-log-folder").addEventListener("click", async () => {
  try {
    await call("open_log_folder");
  } catch (e) {
    showAlert(alertEl, e);
  }
});
document.getElementById("copy-diagnostics").addEventListener("click", async () => {
  try {
    await call("copy_diagnostics");
    toast("Diagnostics copied: versions, OS, settings without secrets, last 200 log lines");
  } catch (e) {
    showAlert(alertEl, e);
  }
});
