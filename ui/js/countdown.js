// "reconnecting in 4s", counting down in the page: the app sends the moment the next attempt
// is due (retry_at_ms, wall clock) with the event, and the page redraws the seconds left by
// itself. Nothing asks the app anything; the timer runs only while a countdown is shown.

const TICK_MS = 250;
let timer = null;

/** The words for an endpoint's state now: its own, or the seconds left until its next try. */
export function stateText(ep, now = Date.now()) {
  if (ep.state_kind !== "reconnecting" || typeof ep.retry_at_ms !== "number") return ep.state;
  return countdownText(ep.retry_at_ms, now);
}

function countdownText(due, now) {
  const left = Math.ceil((due - now) / 1000);
  return left > 0 ? `reconnecting in ${left}s` : "reconnecting…";
}

/** Keep every `[data-retry-at]` element under `root` counting down until none is left. */
export function runCountdowns(root) {
  const tick = () => {
    const els = root.querySelectorAll("[data-retry-at]");
    if (!els.length) {
      clearInterval(timer);
      timer = null;
      return;
    }
    const now = Date.now();
    for (const el of els) {
      const text = countdownText(Number(el.dataset.retryAt), now);
      if (el.textContent !== text) el.textContent = text;
    }
  };
  if (timer === null && root.querySelector("[data-retry-at]")) timer = setInterval(tick, TICK_MS);
}
