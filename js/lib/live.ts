// Whether the kernel behind a widget answers, and what the view does when it does not.
//
//   watchKernel(model, root, {disable, timeoutMs})   sends {type: "ping"}; the Python widget answers
//       {type: "pong"}. No answer within timeoutMs (a saved notebook reopened without its kernel, a restarted
//       or busy kernel) marks root data-kernel="offline", shows a note saying why and, with `disable`, turns
//       off every control (they have nothing to talk to). A later answer turns them back on. Each user action
//       (click, change) inside root checks again, so a kernel that goes away later is noticed.
//   `onChange(live)` runs on each change of state (before controls are turned off), for example to redraw
//   values a control showed before its change was sent.
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
  let timer: number | undefined;
  let lastCheck = 0;

  const setLive = (live: boolean) => {
    const changed = root.dataset.kernel !== (live ? "live" : "offline");
    root.dataset.kernel = live ? "live" : "offline";
    if (live) {
      note.remove();
      for (const c of root.querySelectorAll<HTMLInputElement>("[data-gs-offline]")) {
        c.disabled = false;
        delete c.dataset.gsOffline;
      }
      if (changed) onChange?.(true);
      return;
    }
    if (!note.isConnected) {
      const style = root.querySelector(":scope > style");
      if (style) style.after(note);
      else root.prepend(note);
    }
    if (!disable) {
      if (changed) onChange?.(false);
      return;
    }
    const focused = document.activeElement;
    if (focused instanceof HTMLElement && root.contains(focused)) focused.blur();
    if (changed) onChange?.(false); // redraws first: a redraw may set `disabled` on its own controls
    for (const c of root.querySelectorAll<HTMLInputElement>(CONTROLS)) {
      if (c.disabled) continue;
      c.disabled = true;
      c.dataset.gsOffline = "1";
    }
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

  // A user action re-checks (at most once a second), so a kernel gone since the last answer is noticed.
  const onAction = () => {
    if (Date.now() - lastCheck > 1000) check();
  };
  model.on("msg:custom", onMessage);
  root.addEventListener("click", onAction, true);
  root.addEventListener("change", onAction, true);
  if (!root.dataset.kernel) root.dataset.kernel = "checking";
  check();

  return {
    check,
    dispose: () => {
      window.clearTimeout(timer);
      model.off("msg:custom", onMessage);
      root.removeEventListener("click", onAction, true);
      root.removeEventListener("change", onAction, true);
    },
  };
}
