// Keyboard behaviour of widget controls inside a notebook host.
//
//   keepKeys(root)                 key events from inside `root` stop there: the notebook never sees them
//   sliderKeys(input)              arrows / PageUp / PageDown / Home / End move a range input by its step
//                                  (Left/Down decrease, Right/Up increase) and fire `input` + `change`
//   onCommit(input, fn)            a number or text box commits on Enter and on change (blur), once per value
//   gridKey(key), moveIndex(...)   a grid's keyboard cursor (the heatmap): ↑/↓ rows, ←/→ columns, PageUp/PageDown
//                                  ten rows, Home/End the first/last row, Enter "open", Escape "clear"
//
// Every function returns a disposer that removes its listeners.

/** Stops keydown/keyup/keypress inside `root` from reaching the host (JupyterLab's command-mode shortcuts). */
export function keepKeys(root: HTMLElement): () => void {
  const stop = (e: Event) => e.stopPropagation();
  const kinds = ["keydown", "keyup", "keypress"] as const;
  for (const kind of kinds) root.addEventListener(kind, stop);
  return () => {
    for (const kind of kinds) root.removeEventListener(kind, stop);
  };
}

/** How many steps a key moves a slider: -1 / +1 for arrows, ±10 for PageDown / PageUp, ±Infinity for Home / End. */
export function sliderDelta(key: string): number {
  switch (key) {
    case "ArrowLeft":
    case "ArrowDown":
      return -1;
    case "ArrowRight":
    case "ArrowUp":
      return 1;
    case "PageDown":
      return -10;
    case "PageUp":
      return 10;
    case "Home":
      return -Infinity;
    case "End":
      return Infinity;
    default:
      return 0;
  }
}

/** `value` moved by `steps` × `step`, kept in [min, max] and on the step grid from `min`. */
export function stepValue(value: number, steps: number, min: number, max: number, step: number): number {
  if (steps === -Infinity) return min;
  if (steps === Infinity) return max;
  const size = step > 0 ? step : (max - min) / 100;
  const index = Math.round((value - min) / size) + steps;
  const next = min + index * size;
  // Trim float noise (0.1 + 0.2) so labels read cleanly.
  return Math.min(max, Math.max(min, Number(next.toPrecision(12))));
}

/** Arrow keys move `input` (a range input) the same way in every host; fires `input` then `change`. */
export function sliderKeys(input: HTMLInputElement): () => void {
  const onKey = (e: KeyboardEvent) => {
    const steps = sliderDelta(e.key);
    if (steps === 0 || input.disabled || e.altKey || e.ctrlKey || e.metaKey) return;
    e.preventDefault();
    e.stopPropagation();
    const min = Number(input.min || 0);
    const max = Number(input.max || 100);
    const step = input.step === "any" ? 0 : Number(input.step || 1);
    const next = stepValue(Number(input.value), steps, min, max, step);
    if (next === Number(input.value)) return;
    input.value = String(next);
    input.dispatchEvent(new Event("input", { bubbles: true }));
    input.dispatchEvent(new Event("change", { bubbles: true }));
  };
  input.addEventListener("keydown", onKey);
  return () => input.removeEventListener("keydown", onKey);
}

/**
 * Calls `fn(value)` when the box is committed: Enter, or a change on blur. A value already committed
 * is not sent twice (Enter then blur). Escape restores the last committed value.
 */
export function onCommit(input: HTMLInputElement, fn: (value: string) => void): () => void {
  let last: string | null = null;
  const commit = () => {
    if (input.value === last) return;
    last = input.value;
    fn(input.value);
  };
  const onKey = (e: KeyboardEvent) => {
    if (e.key === "Enter") {
      e.preventDefault();
      commit();
    } else if (e.key === "Escape" && last !== null) {
      input.value = last;
    }
  };
  const onFocus = () => {
    last = input.value;
  };
  input.addEventListener("keydown", onKey);
  input.addEventListener("change", commit);
  input.addEventListener("focus", onFocus);
  return () => {
    input.removeEventListener("keydown", onKey);
    input.removeEventListener("change", commit);
    input.removeEventListener("focus", onFocus);
  };
}

/** What a key does in a rows × columns grid: a move, Enter ("open"), Escape ("clear"), or nothing (null). */
export type GridKey = { rows: number; cols: number } | "open" | "clear" | null;

export function gridKey(key: string): GridKey {
  switch (key) {
    case "ArrowUp":
      return { rows: -1, cols: 0 };
    case "ArrowDown":
      return { rows: 1, cols: 0 };
    case "PageUp":
      return { rows: -10, cols: 0 };
    case "PageDown":
      return { rows: 10, cols: 0 };
    case "Home":
      return { rows: -Infinity, cols: 0 };
    case "End":
      return { rows: Infinity, cols: 0 };
    case "ArrowLeft":
      return { rows: 0, cols: -1 };
    case "ArrowRight":
      return { rows: 0, cols: 1 };
    case "Enter":
      return "open";
    case "Escape":
      return "clear";
    default:
      return null;
  }
}

/** Index `i` of `n` moved by `delta` and kept in [0, n); from no position (i < 0) a move lands on the first
 * (End: the last). -1 when there is nothing (n = 0). */
export function moveIndex(i: number, delta: number, n: number): number {
  if (n <= 0) return -1;
  if (delta === Infinity) return n - 1;
  if (delta === -Infinity || i < 0) return 0;
  return Math.min(n - 1, Math.max(0, i + delta));
}
