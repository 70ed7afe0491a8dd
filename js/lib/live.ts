// Whether the kernel behind a widget answers, and what the view does when it does not.
//
//   watchKernel(model, root, {disable, timeoutMs})   sends {type: "ping"}; the Python widget answers
//       {type: "pong"}. No answer within timeoutMs (a saved notebook reopened without its kernel, a restarted
//       or busy kernel) marks root data-kernel="offline", shows a note saying why and, with `disable`, turns
//       off every control (they have nothing to talk to). A later answer turns them back on. Each user action
//       (click, change) inside root checks again, so a kernel that goes away later is noticed.
//   `onChange(live)` runs on each change of state (before controls are turned off), for example to redraw
//   values a control showed before its change was sent.
//   A control used while the kernel does not answer (or whose use found it gone) says so right beside it
//   (.gs-offline-here, next to the control's [data-gs-anchor] or <label>): a slider that goes back to the
//   kernel's value, or a button that does nothing, never does so without a word. Controls turned off carry the
//   reason in their tooltip.
//   Returns { check(), dispose() }.
import { el } from "./dom";

/** The part of anywidget's model this needs. */
interface Channel {
  send(content: unknown): void;
  on(event: "msg:custom", fn: (msg: unknown) => void): void;
  off(event: "msg:custom", fn: (msg: unknown) => void): void;
}

/** The note shown while the kernel does not answer. */
export function offlineNote(disable: boolean): string {
  const then = disable ? "its controls are off until it answers." : "until it answers, changes here stay in this view.";
  return (
    "No answer from the kernel: it is busy, or gone (after reopening the notebook or restarting the kernel, run " +
    `this cell again); ${then}`
  );
}

/** The line shown beside a control used without a kernel. */
export function notSentNote(): string {
  return "Not sent: no answer from the kernel, so this control does nothing now (run the cell again once the " +
    "kernel is back).";
}

const CONTROLS = "input, select, textarea, button";

export function watchKernel(
  model: Channel,
  root: HTMLElement,
  {
    disable = true,
    timeoutMs = 4000,
    onChange,
  }: { disable?: boolean; timeoutMs?: number; onChange?: (live: boolean) => void } = {},
): { check: () => void; dispose: () => void } {
  const note = el("div", "gs-offline-note", offlineNote(disable));
  note.setAttribute("role", "status");
  const here = el("div", "gs-offline-here", notSentNote());
  here.setAttribute("role", "alert");
  let timer: number | undefined;
  let lastCheck = 0;
  let lastControl: Element | null = null; // the control of the last user action, and when
  let lastActionAt = 0;

  // Beside the control: after its row or label when it has one (a note inside a grid row would break it).
  const sayWhy = (control: Element) => {
    const anchor = control.closest("[data-gs-anchor]") ?? control.closest("label") ?? control;
    (root.contains(anchor) ? anchor : control).after(here);
  };

  const setLive = (live: boolean) => {
    const changed = root.dataset.kernel !== (live ? "live" : "offline");
    root.dataset.kernel = live ? "live" : "offline";
    if (live) {
      note.remove();
      here.remove();
      for (const c of root.querySelectorAll<HTMLInputElement>("[data-gs-offline]")) {
        c.disabled = false;
        c.title = c.dataset.gsTitle ?? "";
        delete c.dataset.gsOffline;
        delete c.dataset.gsTitle;
      }
      if (changed) onChange?.(true);
      return;
    }
    if (!note.isConnected) {
      const style = root.querySelector(":scope > style");
      if (style) style.after(note);
      else root.prepend(note);
    }
    // A control used just before the kernel was found gone: its change went nowhere; say so beside it.
    const recent = lastControl !== null && root.contains(lastControl) && Date.now() - lastActionAt <= timeoutMs + 1500;
    if (!disable) {
      if (changed) onChange?.(false);
      if (recent && lastControl) sayWhy(lastControl);
      return;
    }
    const focused = document.activeElement;
    if (focused instanceof HTMLElement && root.contains(focused)) focused.blur();
    if (changed) onChange?.(false); // redraws first: a redraw may set `disabled` on its own controls
    for (const c of root.querySelectorAll<HTMLInputElement>(CONTROLS)) {
      if (c.disabled) continue;
      c.disabled = true;
      c.dataset.gsOffline = "1";
      c.dataset.gsTitle = c.title;
      c.title = offlineNote(true);
    }
    if (recent && lastControl) sayWhy(lastControl);
  };

  const onMessage = (msg: unknown) => {
    if ((msg as { type?: string } | null)?.type !== "pong") return;
    window.clearTimeout(timer);
    timer = undefined;
    setLive(true);
  };

  const check = () => {
    lastCheck = Date.now();
    if (timer !== undefined) return; // an answer is already awaited
    try {
      model.send({ type: "ping" });
    } catch {
      setLive(false);
      return;
    }
    timer = window.setTimeout(() => {
      timer = undefined;
      setLive(false);
    }, timeoutMs);
  };

  // A user action re-checks (at most once a second), so a kernel gone since the last answer is noticed; a
  // control used while the kernel is known to be gone says so at once.
  const onAction = (event: Event) => {
    const control = event.target instanceof Element ? event.target.closest(CONTROLS) : null;
    if (control && root.contains(control)) {
      lastControl = control;
      lastActionAt = Date.now();
      if (root.dataset.kernel === "offline") sayWhy(control);
    }
    if (Date.now() - lastCheck > 1000) check();
  };
  model.on("msg:custom", onMessage);
  root.addEventListener("click", onAction, true);
  root.addEventListener("change", onAction, true);
  root.addEventListener("pointerdown", onAction, true);
  if (!root.dataset.kernel) root.dataset.kernel = "checking";
  check();

  return {
    check,
    dispose: () => {
      window.clearTimeout(timer);
      model.off("msg:custom", onMessage);
      root.removeEventListener("click", onAction, true);
      root.removeEventListener("change", onAction, true);
      root.removeEventListener("pointerdown", onAction, true);
    },
  };
}
