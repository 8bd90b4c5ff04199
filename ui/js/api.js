// The page's only door to the app: Tauri commands and events (window.__TAURI__, withGlobalTauri).

const tauri = window.__TAURI__;

/** A failed command: the core's one-line message, and the form field it is about (if any). */
export class CommandError extends Error {
  constructor(message, field) {
    super(message);
    this.field = field || null;
  }
}

/** Call a command; a failure becomes a CommandError carrying the core's words. */
export async function call(command, args = {}) {
  if (!tauri) throw new CommandError("this page runs outside Piko Connector (no Tauri bridge)");
  try {
    return await tauri.core.invoke(command, args);
  } catch (e) {
    if (typeof e === "string") throw new CommandError(e);
    if (e && typeof e.message === "string") throw new CommandError(e.message, e.field);
    throw new CommandError(String(e));
  }
}

/** Subscribe to an event the app pushes; returns a promise of the unsubscribe function. */
export function on(event, handler) {
  if (!tauri) return Promise.resolve(() => {});
  return tauri.event.listen(event, (e) => handler(e.payload));
}
