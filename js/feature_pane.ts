// FeaturePane: one SAE feature's explanation, logits, density histogram, examples and a live test box.
// Mirrors gemscope_widgets/widgets/feature_pane.py (traits and messages: lib/protocol.ts). Every string from the
// kernel goes in via textContent.
import type { RenderProps } from "@anywidget/types";
import css from "./feature_pane.css";
import { heatBackground, normalise } from "./lib/colors";
import { el, mountTheme, VIEW_ROOTS } from "./lib/dom";
import { formatPercent, formatValue, visibleText } from "./lib/format";
import { drawHistogram } from "./lib/histogram";
import { watchKernel } from "./lib/live";
import { keepKeys } from "./lib/keys";
import { type FeaturePaneMessage, type FeaturePaneModel, type PaneLabelScore, sendMessage } from "./lib/protocol";
import { float32Of as floats } from "./lib/sparse";
import { renderTokens } from "./lib/tokens";

/** Token spans shaded by activation (relative to `scale`), each with its value in the tooltip. */
export function highlightTokens(
  container: HTMLElement,
  tokens: string[],
  values: Float32Array,
  scale: number,
  special?: boolean[],
  peak = -1,
): HTMLSpanElement[] {
  const spans = renderTokens(container, tokens, special);
  spans.forEach((span, i) => {
    const v = values[i] ?? 0;
    span.dataset.value = String(v);
    span.title = `${visibleText(tokens[i])}: ${formatValue(v)}`;
    if (v > 0 && scale > 0) {
      span.style.background = heatBackground(normalise(v, scale));
      span.classList.add("gs-active");
    }
    if (i === peak) span.classList.add("gs-peak");
  });
  return spans;
}

/** Related rows from co-firing counts (backend/analysis/hierarchy.py): a mark before the chip and its tooltip. */
const FAMILY_KINDS: Record<string, { mark: string; words: string }> = {
  parent: { mark: "↑ parent ", words: "coarser parent: P(it fires | this fires) =" },
  child: { mark: "↓ child ", words: "finer child: P(this fires | it fires) =" },
};

function render({ model, el: root }: RenderProps<FeaturePaneModel>): () => void {
  mountTheme(root, VIEW_ROOTS.feature_pane, css);
  const send = (message: FeaturePaneMessage) => sendMessage(model, message);
  const pane = el("div", "gs-pane");
  root.append(pane);

  const head = el("div", "gs-pane-head");
  const title = el("h3");
  const saeName = el("span", "gs-muted");
  const link = el("a", "gs-np-link", "Neuronpedia ↗");
  link.target = "_blank";
  link.rel = "noopener noreferrer";
  const steer = el("button", "gs-steer", "steer");
  head.append(title, saeName, link, steer);

  // Search box: features by the words of their labels and explanations (search.py), a hit opens it here.
  const searchBox = el("div", "gs-search");
  const searchInput = el("input", "gs-search-input");
  searchInput.type = "search";
  searchInput.placeholder = "Find features by meaning (Enter)";
  const searchStatus = el("span", "gs-muted gs-search-status");
  const searchHits = el("div", "gs-search-hits");
  searchBox.append(searchInput, searchStatus, searchHits);

  const explanation = el("div", "gs-explanation");
  const labelScore = el("div", "gs-label-score gs-muted");
  const density = el("div", "gs-density gs-muted");
  const hist = el("div", "gs-hist");
  const noStats = el("div", "gs-nostats");
  const noStatsText = el("span", "gs-muted");
  const scanButton = el("button", "gs-scan", "run scan");
  const progress = el("progress", "gs-progress");
  const scanStatus = el("span", "gs-muted gs-scan-status");
  noStats.append(noStatsText, scanButton, " ", progress, " ", scanStatus);

  const logitRow = el("div", "gs-row gs-logits");
  const relatedBox = el("div");
  const relatedTitle = el("h4", "", "Related features");
  const related = el("div", "gs-related");
  relatedBox.append(relatedTitle, related);
  // The family tree across widths (a companion SAE of the same site): this latent, then its nearest latents there.
  const familyBox = el("div", "gs-family");
  const familyTitle = el("h4", "", "Across widths");
  const familyRoot = el("div", "gs-family-root gs-muted");
  const familyList = el("ul", "gs-family-tree");
  familyBox.append(familyTitle, familyRoot, familyList);

  const makeSection = (label: string, cls: string) => {
    const box = el("div", cls);
    const h = el("h4", "", label);
    const list = el("div", "gs-example-list");
    const pager = el("div", "gs-pager");
    const prev = el("button", "gs-prev", "‹ prev");
    const where = el("span", "gs-where gs-muted");
    const next = el("button", "gs-next", "next ›");
    pager.append(prev, where, next);
    box.append(h, list, pager);
    return { box, list, prev, next, where };
  };
  const top = makeSection("Top activations", "gs-top");
  const quant = makeSection("Across the range (quantiles)", "gs-quantiles");

  const testBox = el("div", "gs-test");
  const testTitle = el("h4", "", "Test your own text");
  const testInput = el("textarea");
  testInput.placeholder = "Type text, then press “test” (Ctrl+Enter)";
  const testButton = el("button", "gs-test-run", "test");
  const testOut = el("div", "gs-test-out");
  const testStatus = el("div", "gs-status");
  testBox.append(testTitle, testInput, testButton, testOut, testStatus);

  const error = el("div", "gs-error");
  pane.append(head, searchBox, explanation, labelScore, density, hist, noStats, logitRow, relatedBox, top.box, quant.box, testBox, familyBox, error);

  const scaleOf = () => {
    const m = model.get("info").max_act;
    if (typeof m === "number" && m > 0) return m;
    const first = model.get("examples").items?.[0];
    return first ? first.value : 0;
  };

  const drawInfo = () => {
    const info = model.get("info");
    noStatsText.textContent =
      `No corpus statistics for this ${info.dictionary ?? "SAE"} yet: examples and density need a scan. `;
    title.textContent = `Feature ${model.get("feature")}`;
    saeName.textContent = `${info.sae ?? ""} · ${info.width?.toLocaleString() ?? "?"} features`;
    const url = info.url ?? "";
    link.hidden = !url.startsWith("https://www.neuronpedia.org/");
    if (!link.hidden) link.href = url;
    explanation.textContent = info.explanation
      ? info.explanation
      : info.label
        ? `Automatic label: ${info.label}`
        : "No explanation yet.";
    explanation.title = info.explanation ? "" : "fires most on … → promotes next tokens … (top examples and logit lens)";
    explanation.classList.toggle("gs-muted", !info.explanation);
    labelScore.textContent = labelScoreText(info.score);
    labelScore.title = "Lookup-table simulation on held-out text: Pearson r of predicted vs true activation";
    const parts: string[] = [];
    if (typeof info.density === "number") {
      parts.push(`fires on ${formatPercent(info.density)} of ${(info.n_tokens ?? 0).toLocaleString()} tokens`);
    }
    if (typeof info.max_act === "number") parts.push(`max activation ${formatValue(info.max_act)}`);
    if (info.source) parts.push(`from ${info.source}`);
    density.textContent = parts.join(" · ");
    noStats.hidden = Boolean(info.source) && model.get("scan").state !== "running";
    drawScan();
  };

  const drawScan = () => {
    const scan = model.get("scan");
    const running = scan.state === "running";
    scanButton.disabled = running;
    progress.hidden = !running;
    if (running && scan.total) {
      progress.max = scan.total;
      progress.value = scan.done ?? 0;
    } else if (running) {
      progress.removeAttribute("value");
    }
    scanStatus.textContent = scan.message ?? "";
    scanStatus.classList.toggle("gs-error", scan.state === "error");
    if (running) noStats.hidden = false;
  };

  const drawHist = () => {
    const h = model.get("histogram");
    const edges = floats(h.edges);
    const counts = floats(h.counts);
    hist.replaceChildren();
    if (counts.length > 0) hist.append(drawHistogram(edges, counts, { label: "non-zero activations" }));
  };

  const drawLogits = () => {
    const logits = model.get("logits");
    logitRow.replaceChildren();
    for (const [label, rows, cls] of [
      ["Promotes", logits.top ?? [], "gs-pos"],
      ["Suppresses", logits.bottom ?? [], "gs-neg"],
    ] as const) {
      const box = el("div");
      box.append(el("h4", "", label));
      const list = el("div", `gs-logit-list ${cls}`);
      for (const [tok, val] of rows) {
        const t = el("span", "gs-token", tok);
        t.title = visibleText(tok);
        list.append(t, el("span", "gs-logit-val", formatValue(val)));
      }
      box.append(list);
      logitRow.append(box);
    }
  };

  const drawRelated = () => {
    const rows = model.get("related");
    relatedBox.hidden = rows.length === 0;
    related.replaceChildren(
      ...rows.map((r) => {
        const dense = typeof r.density === "number" ? ` · ${formatPercent(r.density)} of tokens` : "";
        const b = el("button", "gs-chip", `#${r.feature} ${r.explanation ? `${r.explanation} ` : ""}${formatValue(r.score)}`);
        b.dataset.feature = String(r.feature);
        b.title = `${r.kind === "decoder" ? "decoder cosine" : "co-activation"} ${formatValue(r.score)}${dense}`;
        const family = FAMILY_KINDS[r.kind];
        if (family) {
          b.prepend(family.mark);
          b.title = `${family.words} ${formatValue(r.score)}${dense}`;
        }
        return b;
      }),
    );
  };
  const drawFamily = () => {
    const fam = model.get("family") ?? {};
    const rows = fam.rows ?? [];
    familyBox.hidden = fam.sae === undefined;
    if (fam.sae === undefined) return;
    const info = model.get("info");
    const width = (fam.width ?? 0).toLocaleString();
    const words = fam.relation === "narrower"
      ? `#${model.get("feature")} of ${info.sae ?? ""} is nearest to these latents of the narrower ${fam.sae} (${width}):`
      : `#${model.get("feature")} of ${info.sae ?? ""} splits into these latents of the wider ${fam.sae} (${width}):`;
    const more = (fam.total ?? 0) > rows.length ? ` (${rows.length} of ${(fam.total ?? 0).toLocaleString()} shown)` : "";
    familyRoot.textContent = rows.length ? words + more : `No latent of ${fam.sae} (${width}) has #${model.get("feature")} as its nearest.`;
    familyList.replaceChildren(
      ...rows.map((r) => {
        const item = el("li", "gs-family-item");
        const b = el("button", "gs-chip gs-family-chip", `#${r.feature} ${r.explanation}`);
        b.dataset.across = String(r.feature);
        const co = r.coactivation === null ? "" : ` · fires with it ${formatPercent(r.coactivation)}`;
        b.title = `decoder cosine ${formatValue(r.cosine)}${co}; click to open it`;
        item.append(b, el("span", "gs-family-cos gs-muted", `cos ${formatValue(r.cosine)}`));
        return item;
      }),
    );
  };
  const onFamily = (e: MouseEvent) => {
    const target = (e.target as Element | null)?.closest<HTMLElement>("[data-across]");
    if (target) send({ type: "open_across", feature: Number(target.dataset.across) });
  };
  familyList.addEventListener("click", onFamily);
  const onRelated = (e: MouseEvent) => {
    const target = (e.target as Element | null)?.closest<HTMLElement>("[data-feature]");
    if (target) send({ type: "open", feature: Number(target.dataset.feature) });
  };
  related.addEventListener("click", onRelated);
  searchHits.addEventListener("click", onRelated);
  // Enter searches; Enter on an emptied box (or emptying it) clears the last result, which the kernel confirms.
  const clearSearch = () => {
    searchStatus.textContent = "";
    searchHits.replaceChildren();
    send({ type: "search", query: "" });
  };
  const onSearchKey = (e: KeyboardEvent) => {
    if (e.key !== "Enter") return;
    if (!searchInput.value.trim()) return clearSearch();
    searchStatus.textContent = "searching…";
    send({ type: "search", query: searchInput.value });
  };
  const onSearchInput = () => {
    if (!searchInput.value.trim() && (model.get("found") ?? {}).query !== undefined) clearSearch();
  };
  searchInput.addEventListener("keydown", onSearchKey);
  searchInput.addEventListener("input", onSearchInput);
  const drawFound = () => {
    const found = model.get("found") ?? {};
    const hits = found.hits ?? [];
    searchStatus.textContent = found.progress
      ? found.progress
      : found.error
      ? found.error
      : found.query === undefined
        ? ""
        : `${hits.length} feature${hits.length === 1 ? "" : "s"} for “${found.query}”`;
    searchStatus.classList.toggle("gs-error", Boolean(found.error));
    searchHits.replaceChildren(
      ...hits.map((h) => {
        const chip = el("button", "gs-chip gs-search-hit", `#${h.feature} ${h.label}`);
        chip.dataset.feature = String(h.feature);
        const scores = h.imported.map(([name, value]) => `${name} ${formatValue(value)}`);
        if (h.simulation !== null) scores.unshift(`label fit r ${formatValue(h.simulation)}`);
        chip.title = [`match ${formatValue(h.score)}`, `source: ${h.source}`, ...scores].join(" · ");
        return chip;
      }),
    );
  };

  const drawPage = (key: "examples" | "quantiles", sec: ReturnType<typeof makeSection>) => {
    const page = model.get(key);
    const items = page.items ?? [];
    const total = page.total ?? 0;
    const start = page.start ?? 0;
    const scale = scaleOf();
    sec.box.hidden = total === 0 && key === "quantiles";
    sec.list.replaceChildren(
      ...items.map((ex) => {
        const row = el("div", "gs-example");
        row.append(el("span", "gs-example-val", formatValue(ex.value)));
        const toks = el("span");
        highlightTokens(toks, ex.tokens, floats(ex.values), scale, undefined, ex.peak);
        row.append(toks);
        return row;
      }),
    );
    if (total === 0) sec.list.append(el("div", "gs-muted", "No examples."));
    sec.where.textContent = total ? `${start + 1}–${start + items.length} of ${total}` : "";
    sec.prev.disabled = start <= 0;
    sec.next.disabled = start + items.length >= total;
  };
  const pager = (kind: "top" | "quantile", key: "examples" | "quantiles", dir: number) => () => {
    const page = model.get(key);
    const size = model.get("page_size") || 5;
    send({ type: "page", kind, start: Math.max(0, (page.start ?? 0) + dir * size) });
  };
  const handlers: [HTMLElement, () => void][] = [
    [top.prev, pager("top", "examples", -1)],
    [top.next, pager("top", "examples", 1)],
    [quant.prev, pager("quantile", "quantiles", -1)],
    [quant.next, pager("quantile", "quantiles", 1)],
    [scanButton, () => send({ type: "scan" })],
    [steer, () => send({ type: "steer" })],
  ];
  const runTest = () => {
    const text = testInput.value;
    if (!text.trim()) return;
    testStatus.textContent = "running…";
    send({ type: "test", text });
  };
  handlers.push([testButton, runTest]);
  for (const [node, fn] of handlers) node.addEventListener("click", fn);
  const onKey = (e: KeyboardEvent) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runTest();
  };
  testInput.addEventListener("keydown", onKey);
  const stopKeys = keepKeys(root);

  const drawTest = () => {
    const t = model.get("test");
    const tokens = t.tokens ?? [];
    testStatus.textContent = t.error ?? "";
    testStatus.classList.toggle("gs-error", Boolean(t.error));
    testOut.replaceChildren();
    if (!tokens.length) return;
    const values = floats(t.values);
    let max = 0;
    values.forEach((v) => (max = Math.max(max, v)));
    const scale = Math.max(scaleOf(), max);
    highlightTokens(testOut, tokens, values, scale, t.special);
    testStatus.textContent = max > 0 ? `max ${formatValue(max)} on this text` : "The feature does not fire on this text.";
  };

  const drawSteer = () => {
    steer.hidden = !model.get("can_steer");
  };
  const drawError = () => {
    error.textContent = model.get("error");
  };
  const drawAll = () => {
    drawInfo();
    drawHist();
    drawLogits();
    drawRelated();
    drawFamily();
    drawPage("examples", top);
    drawPage("quantiles", quant);
    drawTest();
    drawSteer();
    drawError();
    drawFound();
  };
  drawAll();
  const kernel = watchKernel(model, root); // every control here asks the kernel

  const listeners: [string, () => void][] = [
    ["change:feature", drawInfo],
    ["change:info", () => (drawInfo(), drawPage("examples", top), drawPage("quantiles", quant))],
    ["change:scan", drawScan],
    ["change:histogram", drawHist],
    ["change:logits", drawLogits],
    ["change:related", drawRelated],
    ["change:family", drawFamily],
    ["change:examples", () => drawPage("examples", top)],
    ["change:quantiles", () => drawPage("quantiles", quant)],
    ["change:test", drawTest],
    ["change:can_steer", drawSteer],
    ["change:error", drawError],
    ["change:found", drawFound],
  ];
  for (const [name, fn] of listeners) model.on(name, fn);
  return () => {
    for (const [name, fn] of listeners) model.off(name, fn);
    for (const [node, fn] of handlers) node.removeEventListener("click", fn);
    related.removeEventListener("click", onRelated);
    familyList.removeEventListener("click", onFamily);
    searchHits.removeEventListener("click", onRelated);
    searchInput.removeEventListener("keydown", onSearchKey);
    searchInput.removeEventListener("input", onSearchInput);
    testInput.removeEventListener("keydown", onKey);
    stopKeys();
    kernel.dispose();
  };
}

export default { render };

/** "label fit r 0.41 · precision 63% · recall 22% (310 of 25,000 held-out tokens) · eleuther_fuzz 0.8", or why not. */
function labelScoreText(score: PaneLabelScore | null | undefined): string {
  if (!score || !score.label) return "";
  const imported = score.imported.map(([name, value]) => `${name} ${formatValue(value)}`);
  if (score.simulation === null) return [`label not scored: ${score.reason}`, ...imported].join(" · ");
  const parts = [`label fit r ${formatValue(score.simulation)}`];
  if (score.precision !== null) parts.push(`precision ${formatPercent(score.precision)}`);
  if (score.recall !== null) parts.push(`recall ${formatPercent(score.recall)}`);
  parts.push(`(fires on ${score.n_active.toLocaleString()} of ${score.n_tokens.toLocaleString()} held-out tokens)`);
  return [...parts, ...imported].join(" · ");
}
