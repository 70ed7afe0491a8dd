// TokenView: a prompt's tokens; clicking one tells Python, whose reply (`status`) is shown below.
// Mirrors gemscope_widgets/widgets/token_view.py (traits: TokenViewModel in lib/protocol.ts).
import type { RenderProps } from "@anywidget/types";
import { el as element, mountTheme, VIEW_ROOTS } from "./lib/dom";
import { watchKernel } from "./lib/live";
import type { TokenViewModel } from "./lib/protocol";
import { renderTokens, tokenIndexOf } from "./lib/tokens";

function render({ model, el }: RenderProps<TokenViewModel>): () => void {
  mountTheme(el, VIEW_ROOTS.token_view);
  const list = element("div");
  const status = element("div", "gs-status");
  el.append(list, status);

  let spans: HTMLSpanElement[] = [];
  const drawTokens = () => {
    spans = renderTokens(list, model.get("tokens"), model.get("special"));
    for (const span of spans) span.classList.add("gs-clickable");
    drawSelection();
  };
  const drawSelection = () => {
    const selected = model.get("selected_token");
    spans.forEach((span, i) => span.classList.toggle("gs-selected", i === selected));
  };
  const drawStatus = () => {
    status.textContent = model.get("status");
  };

  const onClick = (event: MouseEvent) => {
    const index = tokenIndexOf(event.target);
    if (index < 0) return;
    model.set("selected_token", index);
    model.save_changes();
  };
  list.addEventListener("click", onClick);

  drawTokens();
  drawStatus();
  model.on("change:tokens", drawTokens);
  model.on("change:special", drawTokens);
  model.on("change:selected_token", drawSelection);
  model.on("change:status", drawStatus);
  const kernel = watchKernel(model, el, { disable: false });
  return () => {
    kernel.dispose();
    list.removeEventListener("click", onClick);
    model.off("change:tokens", drawTokens);
    model.off("change:special", drawTokens);
    model.off("change:selected_token", drawSelection);
    model.off("change:status", drawStatus);
  };
}

export default { render };
