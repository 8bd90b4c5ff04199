// The one place a new view enters the page. Views come from command replies and from
// `piko://view` events, which can arrive out of order; each carries a sequence number from
// the app, and an older view never replaces a newer one.

let last = -1;
let draw = () => {};

/** Set the function that draws a view (app.js). */
export function setRenderer(fn) {
  draw = fn;
}

/** Draw `view` unless a newer one was drawn already. */
export function apply(view) {
  if (typeof view?.seq === "number") {
    if (view.seq < last) return;
    last = view.seq;
  }
  draw(view);
}
