// Chat: a conversation as turns; template tokens marked (not hidden); heat of the selected features per token;
// per-turn feature chips; a box adds a user turn (Enter sends, Shift+Enter a new line) and the model's turn streams
// in; "continue" streams the model's next turn, "stop" cancels it; edit a message and re-run from there. A control
// that is off says why beside it (chatControls). Mirrors gemscope_widgets/widgets/chat.py.
import type { RenderProps } from "@anywidget/types";
import css from "./chat.css";
import { heatBackground, normalise, trackUnderline } from "./lib/colors";
import { el, mountTheme, VIEW_ROOTS } from "./lib/dom";
import { formatValue } from "./lib/format";
import { type ChatMessage, type ChatModel, sendMessage } from "./lib/protocol";
import { float32Of as floats } from "./lib/sparse";
import { keepKeys } from "./lib/keys";
import { watchKernel } from "./lib/live";
import { renderToken } from "./lib/tokens";

type Model = ChatModel;

/** Why a control is off ("" when it is on): the rule of ChatSession (backend/behaviour/chat_session.py). */
interface ChatReasons {
  continueWhy: string;
  inputWhy: string; // the box and its send button
  sendWhy: string; // the send button alone (an empty box)
}

function chatReasons(running: boolean, lastRole: string | undefined, draft: string): ChatReasons {
  const busy = "the model's turn is being generated: wait for it, or press stop";
  const endsOnUser = lastRole === "user";
  const continueWhy = running ? busy : endsOnUser ? "" : "the conversation ends on a model turn: add a user turn below first";
  const inputWhy = running
    ? busy
    : endsOnUser
      ? "the conversation ends on a user turn: press continue for the model's turn (or edit that turn)"
      : "";
  const sendWhy = inputWhy || (draft.trim() ? "" : "type the user's turn first");
  return { continueWhy, inputWhy, sendWhy };
}

function render({ model, el: root }: RenderProps<Model>): () => void {
  mountTheme(root, VIEW_ROOTS.chat, css);
  const warning = el("div", "gs-chat-warning");
  const legend = el("div", "gs-chat-legend");
  const turnsBox = el("div", "gs-chat-turns");
  const stream = el("div", "gs-chat-turn gs-chat-model gs-chat-streaming");
  const controls = el("div", "gs-chat-controls");
  const continueButton = el("button", "gs-chat-continue", "continue ▸");
  continueButton.type = "button";
  const continueWhy = el("span", "gs-chat-why");
  const stopButton = el("button", "gs-chat-stop", "stop ■");
  stopButton.type = "button";
  stopButton.title = "stop the model's turn: nothing is added";
  const status = el("span", "gs-status");
  const continueGroup = el("span", "gs-chat-group");
  continueGroup.dataset.gsAnchor = "";
  continueGroup.append(continueButton, continueWhy);
  controls.append(continueGroup, stopButton, status);
  // The box that adds a user turn: Enter sends, Shift+Enter starts a new line.
  const compose = el("div", "gs-chat-compose");
  compose.dataset.gsAnchor = "";
  const input = el("textarea", "gs-chat-input");
  input.rows = 2;
  input.placeholder = "Add a user turn (Enter sends, Shift+Enter: new line)";
  input.setAttribute("aria-label", "user turn");
  const sendButton = el("button", "gs-chat-send", "send ▸");
  sendButton.type = "button";
  const sendWhy = el("span", "gs-chat-why");
  const sendRow = el("div", "gs-chat-send-row");
  sendRow.append(sendButton, sendWhy);
  compose.append(input, sendRow);
  const error = el("div", "gs-error");
  root.append(warning, legend, turnsBox, stream, controls, compose, error);

  const draw = () => {
    const view = model.get("_view") ?? {};
    const tokens = view.tokens ?? [];
    const template = view.template ?? [];
    const special = view.special ?? [];
    const features = model.get("features") ?? [];
    const heat = floats(model.get("_heat"));
    const track = floats(model.get("_track"));
    const n = tokens.length;
    const maxHeat = heat.reduce((m, v) => Math.max(m, v), 0);
    const maxTrack = track.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    // Chips name their features: "#12" and the label from the kernel (Scope.labels), cut short, whole on hover.
    const labelOf = (f: number): string => view.labels?.[String(f)] ?? "";
    const chipText = (f: number, label: string): (HTMLElement | string)[] =>
      label ? [`#${f} `, el("span", "gs-chat-chip-label", label)] : [`#${f}`];
    warning.textContent = model.get("warning");
    warning.hidden = !model.get("warning");
    legend.replaceChildren();
    if (features.length) {
      legend.append(el("span", "gs-chat-muted", "heat: "));
      for (const f of features) {
        const chip = el("button", "gs-chat-chip gs-selected");
        chip.append(...chipText(f, labelOf(f)), " ✕");
        chip.type = "button";
        chip.title = `stop heating feature ${f}${labelOf(f) ? `: ${labelOf(f)}` : ""}`;
        chip.addEventListener("click", () => sendMessage<ChatMessage>(model, { type: "toggle", feature: f }));
        legend.append(chip);
      }
    } else {
      legend.append(el("span", "gs-chat-muted", "Click a feature chip to see where it fires."));
    }
    if (view.track_label) legend.append(el("span", "gs-chat-track-label", `projection: ${view.track_label}`));

    const turns = view.turns ?? [];
    const nodes: HTMLElement[] = [];
    let cursor = 0;
    const tokenSpan = (i: number) => {
      const span = renderToken(tokens[i], { special: Boolean(special[i]), index: i, title: null });
      if (template[i]) span.classList.add("gs-template");
      let value = 0;
      const parts = [`${i}: ${JSON.stringify(tokens[i])}`];
      features.forEach((f, r) => {
        const v = heat[r * n + i] ?? 0;
        value = Math.max(value, v);
        if (v > 0) parts.push(`#${f} = ${formatValue(v)}`);
      });
      if (value > 0) span.style.background = heatBackground(normalise(value, maxHeat));
      if (track.length === n) {
        const t = track[i];
        parts.push(`projection ${formatValue(t)}`);
        span.style.boxShadow = trackUnderline(t, maxTrack);
      }
      span.title = parts.join("\n");
      return span;
    };
    for (const turn of turns) {
      const box = el("div", `gs-chat-turn gs-chat-${turn.role === "user" ? "user" : "model"}`);
      const head = el("div", "gs-chat-head");
      head.append(el("span", "gs-chat-role", turn.role));
      if (turn.message >= 0) {
        const edit = el("button", "gs-chat-edit", "edit");
        edit.type = "button";
        edit.addEventListener("click", () => startEdit(box, turn.message));
        head.append(edit);
      } else {
        head.append(el("span", "gs-chat-muted", "(generation prompt)"));
      }
      const text = el("div", "gs-tokens gs-chat-text");
      const pre = el("div", "gs-tokens gs-chat-pre");
      for (let i = cursor; i < turn.start; i++) pre.append(tokenSpan(i)); // <bos> before the first turn
      for (let i = turn.start; i < turn.end; i++) {
        const span = tokenSpan(i);
        if (i >= turn.content_start && i < turn.message_start) span.classList.add("gs-chat-system");
        text.append(span);
      }
      cursor = turn.end;
      const chips = el("div", "gs-chat-summary");
      for (const item of turn.summary) {
        const chip = el("button", "gs-chat-chip");
        chip.append(...chipText(item.feature, item.label ?? labelOf(item.feature)), ` ${formatValue(item.max)}`);
        chip.type = "button";
        chip.classList.toggle("gs-selected", features.includes(item.feature));
        chip.title = `feature ${item.feature}${item.label ? ` (${item.label})` : ""}: max ${formatValue(item.max)}, `
          + `mean ${formatValue(item.mean)} on this turn`;
        chip.addEventListener("click", () => sendMessage<ChatMessage>(model, { type: "toggle", feature: item.feature }));
        chips.append(chip);
      }
      if (pre.childElementCount) box.append(pre);
      box.append(head, text, chips);
      nodes.push(box);
    }
    turnsBox.replaceChildren(...nodes);
    drawState();
  };

  const startEdit = (box: HTMLElement, message: number) => {
    const messages = model.get("messages") ?? [];
    const area = el("textarea", "gs-chat-editor");
    area.value = messages[message]?.content ?? "";
    const save = el("button", "", "re-run from here");
    save.type = "button";
    const cancel = el("button", "", "cancel");
    cancel.type = "button";
    const row = el("div", "gs-chat-edit-row");
    row.append(save, cancel);
    save.addEventListener("click", () => sendMessage<ChatMessage>(model, { type: "edit", message, content: area.value }));
    cancel.addEventListener("click", draw);
    box.replaceChildren(area, row);
    area.focus();
  };

  // Each control that is off says why beside it (and in its tooltip); without a kernel lib/live.ts says so.
  const offline = () => root.dataset.kernel === "offline";
  const setControl = (control: HTMLButtonElement | HTMLTextAreaElement, why: HTMLElement, reason: string) => {
    if (offline()) return; // live.ts owns the controls while the kernel does not answer
    control.disabled = reason !== "";
    control.title = reason ? `off: ${reason}` : "";
    why.textContent = reason;
    why.hidden = reason === "";
  };
  const drawControls = () => {
    const running = model.get("running");
    const lastRole = (model.get("messages") ?? []).slice(-1)[0]?.role;
    const reasons = chatReasons(running, lastRole, input.value);
    setControl(continueButton, continueWhy, reasons.continueWhy);
    setControl(input, sendWhy, reasons.inputWhy);
    setControl(sendButton, sendWhy, reasons.sendWhy);
    if (!reasons.inputWhy && reasons.sendWhy) sendWhy.classList.add("gs-chat-hint");
    else sendWhy.classList.remove("gs-chat-hint");
    stopButton.hidden = !running;
  };

  const drawState = () => {
    const running = model.get("running");
    root.classList.toggle("gs-stale", running);
    drawControls();
    status.textContent = model.get("status");
    error.textContent = model.get("error");
    const streamed = model.get("streaming") ?? [];
    stream.hidden = streamed.length === 0;
    const text = el("div", "gs-tokens gs-chat-text");
    for (const tok of streamed) text.append(renderToken(tok));
    stream.replaceChildren(el("span", "gs-chat-role", "model (streaming)"), text);
  };

  const onContinue = () => sendMessage<ChatMessage>(model, { type: "continue" });
  continueButton.addEventListener("click", onContinue);
  const onStop = () => sendMessage<ChatMessage>(model, { type: "stop" });
  stopButton.addEventListener("click", onStop);
  const send = () => {
    if (sendButton.disabled || !input.value.trim()) return;
    sendMessage<ChatMessage>(model, { type: "add", content: input.value });
    input.value = "";
    drawControls();
  };
  sendButton.addEventListener("click", send);
  const onKey = (e: KeyboardEvent) => {
    if (e.key !== "Enter" || e.shiftKey || e.isComposing) return; // Shift+Enter: the textarea's own new line
    e.preventDefault();
    send();
  };
  input.addEventListener("keydown", onKey);
  input.addEventListener("input", drawControls);
  const redraw = ["_view", "_heat", "_track", "features", "warning"];
  for (const name of redraw) model.on(`change:${name}`, draw);
  const state = ["running", "status", "error", "streaming", "messages"];
  for (const name of state) model.on(`change:${name}`, drawState);
  draw();
  const releaseKeys = keepKeys(root);
  // continue, send, stop, edit and the chips all ask the kernel; back online, each control's own rule again.
  const kernel = watchKernel(model, root, { onChange: (live) => live && drawControls() });
  return () => {
    releaseKeys();
    kernel.dispose();
    continueButton.removeEventListener("click", onContinue);
    stopButton.removeEventListener("click", onStop);
    sendButton.removeEventListener("click", send);
    input.removeEventListener("keydown", onKey);
    input.removeEventListener("input", drawControls);
    for (const name of redraw) model.off(`change:${name}`, draw);
    for (const name of state) model.off(`change:${name}`, drawState);
  };
}

export default { render };
