// Token rendering shared by every widget: faithful whitespace, special tokens marked, text only via textContent.
//
//   (a token as a label or tooltip: visibleText in ./format, the one rule shared with the static HTML)
//   renderToken(text, {special, index, title})   one token as a <span class="gs-token">
//   renderTokens(container, tokens, special?)    all tokens of a text; returns the spans (data-index = position)
//   tokenIndexOf(eventTarget)         the index of the token span under a click, or -1
import { el } from "./dom";
import { CONTROL_MARKS, visibleText } from "./format";

const { newline: NEWLINE_MARK, tab: TAB_MARK, empty: EMPTY_MARK, controlPicture, isControl } = CONTROL_MARKS;

export interface TokenOptions {
  /** A special token (BOS, <start_of_turn>, ...): gets the `gs-special` class and a muted look. */
  special?: boolean;
  /** Written to `data-index` so click handlers can find the token's position. */
  index?: number;
  /** Tooltip; defaults to `visibleText(text)`. Pass `null` for none (the caller sets its own). */
  title?: string | null;
}

function marker(text: string): HTMLSpanElement {
  return el("span", "gs-ws", text);
}

/**
 * One token as a span. Spaces are kept as they are (the stylesheet sets `white-space: pre-wrap`),
 * a newline shows "↵" and then really breaks the line, a tab shows "→" and then the tab, and other
 * control characters show their control-picture glyph.
 */
export function renderToken(text: string, opts: TokenOptions = {}): HTMLSpanElement {
  const span = el("span", opts.special ? "gs-token gs-special" : "gs-token");
  if (opts.index !== undefined) span.dataset.index = String(opts.index);
  if (opts.title !== null) span.title = opts.title ?? visibleText(text);
  if (text.length === 0) {
    span.append(marker(EMPTY_MARK));
    return span;
  }
  let plain = "";
  const flush = () => {
    if (plain) span.append(document.createTextNode(plain));
    plain = "";
  };
  for (const ch of text) {
    if (ch === "\n") {
      flush();
      span.append(marker(NEWLINE_MARK), document.createTextNode("\n"));
    } else if (ch === "\t") {
      flush();
      span.append(marker(TAB_MARK), document.createTextNode("\t"));
    } else if (isControl(ch)) {
      flush();
      span.append(marker(controlPicture(ch)));
    } else {
      plain += ch;
    }
  }
  flush();
  return span;
}

/**
 * Replaces the container's children with one span per token (`data-index` = position) and returns
 * the spans. `special[i]` marks token i as special.
 */
export function renderTokens(
  container: HTMLElement,
  tokens: string[],
  special?: ArrayLike<boolean>,
): HTMLSpanElement[] {
  container.classList.add("gs-tokens");
  const spans = tokens.map((tok, i) => renderToken(tok, { special: Boolean(special?.[i]), index: i }));
  container.replaceChildren(...spans);
  return spans;
}

/** The index stored on a token span by `renderTokens`, or -1 when the target is not inside one. */
export function tokenIndexOf(target: EventTarget | null): number {
  if (!(target instanceof Element)) return -1;
  const span = target.closest<HTMLElement>(".gs-token[data-index]");
  return span ? Number(span.dataset.index) : -1;
}
