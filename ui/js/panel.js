// The side panel (add/edit endpoint, sign in): opens beside the list, traps nothing, returns
// focus where it came from when closed, closes on Escape.

const panel = document.getElementById("panel");
const title = document.getElementById("panel-title");
let returnFocus = null;
let current = null;

/** Open the panel showing `form` under `heading`; focus its first field. */
export function openPanel(heading, form) {
  returnFocus = document.activeElement;
  for (const f of panel.querySelectorAll("form")) f.hidden = f !== form;
  title.textContent = heading;
  panel.hidden = false;
  current = form;
  const first = form.querySelector("input:not([type=hidden]):not([disabled]), select, textarea");
  if (first) first.focus();
}

/** Close the panel and give focus back to what opened it. */
export function closePanel() {
  panel.hidden = true;
  current = null;
  if (returnFocus && document.contains(returnFocus)) returnFocus.focus();
  returnFocus = null;
}

/** Clear every inline error of a form. */
export function clearErrors(form) {
  for (const el of form.querySelectorAll(".error")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

/** Show a command error next to its field (or at the form's foot when it names none). */
export function showFieldError(form, error) {
  const field = error.field || "";
  let slot = form.querySelector(`.error[data-field="${CSS.escape(field)}"]`);
  if (!slot) slot = form.querySelector('.error[data-field=""]');
  slot.textContent = error.message;
  const input = field ? form.querySelector(`[name="${CSS.escape(field)}"]`) : null;
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}

/** Whether the panel currently shows `form`. */
export function panelShows(form) {
  return current === form;
}

document.getElementById("panel-close").addEventListener("click", closePanel);
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && !panel.hidden) closePanel();
});
