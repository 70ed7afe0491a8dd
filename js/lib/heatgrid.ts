// One prompt of a heatmap: its text (tokens shaded by the selected feature) above a virtualised
// tokens x features grid (the prompt's top features as columns, cells shaded by activation).
//
//   new PromptGrid(index, promptInfo, selection)   .root (append it); selection() returns the current
//                                                  {prompt, token, feature}
//   setData(csr, corpusMaxima, n, rankBy, notes)    picks the n top features (plus the selected feature when it
//                                                  is not among them) and redraws the grid
//   showSelection()                                 re-shades the text and marks the selected row / column
//   setCursor(feature)                              marks the keyboard cursor's column (-1: none)
//   features                                        the feature ids of the columns, in order
//
// Elements carry data-t (token) / data-f (feature) for the caller's click handler: .gs-hm-cell, .gs-hm-fhead,
// .gs-hm-label, and the text's .gs-token[data-index]. Styles: heatmap.css.
import { heatBackground, normalise, trackUnderline } from "./colors";
import { el } from "./dom";
import { formatPercent, formatValue, visibleText } from "./format";
import { VirtualRows } from "./grid";
import type { PromptInfo, RankBy } from "./protocol";
import type { Csr } from "./sparse";
import { renderTokens } from "./tokens";

/** Labels and densities of features, and which are dense (heatmap.py's feature_info, for one SAE). */
export interface FeatureNotes {
  dense: ReadonlySet<number>;
  labels: ReadonlyMap<number, string>;
  density: ReadonlyMap<number, number>;
}

export const NO_NOTES: FeatureNotes = { dense: new Set(), labels: new Map(), density: new Map() };

/** A density (fraction of corpus tokens) as "12.35%" (formatPercent), "" when unknown. */
export function densityText(d: number | undefined): string {
  if (d === undefined) return "";
  return formatPercent(d);
}

/** A feature's one-line description for tooltips: "#12 · label · fires on 3.1 % of tokens (dense)". */
export function describeFeature(f: number, notes: FeatureNotes): string {
  const parts = [`#${f}`];
  const label = notes.labels.get(f);
  if (label) parts.push(label);
  const d = notes.density.get(f);
  if (d !== undefined) parts.push(`fires on ${densityText(d)} of corpus tokens${notes.dense.has(f) ? " (dense)" : ""}`);
  return parts.join(" · ");
}

export interface Selection {
  prompt: number;
  token: number;
  feature: number;
}

const ROW_HEIGHT = 22;

/** One prompt's text view and grid, for the current SAE and ranking. */
export class PromptGrid {
  readonly root = el("div", "gs-hm-block");
  private readonly text = el("div", "gs-hm-text");
  private readonly grid: VirtualRows;
  private spans: HTMLSpanElement[] = [];
  features: number[] = [];
  /** The feature column under the keyboard cursor (heatmap.ts moves it with ←/→), -1 when none. */
  cursor = -1;
  private matrix: Float32Array = new Float32Array(0);
  private colMax: number[] = [];
  csr!: Csr;
  maxima: Map<number, number> | null = null;
  notes: FeatureNotes = NO_NOTES;
  private track: Float32Array | null = null;
  private trackMax = 0;
  private readonly trackNote = el("div", "gs-hm-track-note");

  constructor(
    readonly index: number,
    readonly info: PromptInfo,
    private readonly selection: () => Selection,
  ) {
    this.root.dataset.p = String(index);
    const kind = info.chat ? " · chat template" : "";
    const title = el("div", "gs-hm-title", `Prompt ${index + 1} · ${info.tokens.length} tokens${kind}`);
    this.grid = new VirtualRows({ rowHeight: ROW_HEIGHT, renderRow: (t) => this.renderRow(t) });
    this.grid.scroller.classList.add("gs-hm-grid");
    this.trackNote.hidden = true;
    this.root.append(title, this.text, this.trackNote, this.grid.scroller);
    this.spans = renderTokens(this.text, info.tokens, info.special);
    this.spans.forEach((span, i) => {
      if (info.template[i] && !info.special[i]) span.classList.add("gs-template");
    });
  }

  /** The projection track under the text (`values [T]`, or null for none) and what it projects on. */
  setTrack(values: Float32Array | null, label: string): void {
    this.track = values && values.length === this.info.tokens.length ? values : null;
    this.trackMax = this.track ? this.track.reduce((m, v) => Math.max(m, Math.abs(v)), 0) : 0;
    this.trackNote.hidden = !this.track;
    this.trackNote.textContent = this.track
      ? `underline: projection on ${label} (largest |value| ${formatValue(this.trackMax)})`
      : "";
  }

  /** Recomputes the feature columns for a SAE / ranking / N. */
  setData(csr: Csr, maxima: Map<number, number> | null, n: number, by: RankBy, notes: FeatureNotes = NO_NOTES): void {
    this.csr = csr;
    this.maxima = maxima;
    this.notes = notes;
    this.features = csr.topFeatures(n, by, notes.dense);
    // The selection is one state: a selected feature outside the top N gets a column of its own.
    const selected = this.selection().feature;
    if (selected >= 0 && !this.features.includes(selected)) this.features.push(selected);
    this.matrix = csr.columns(this.features);
    const k = this.features.length;
    this.colMax = this.features.map((f, j) => {
      const corpus = maxima?.get(f);
      if (corpus !== undefined && corpus > 0) return corpus;
      let m = 0;
      for (let t = 0; t < csr.nRows; t++) m = Math.max(m, this.matrix[t * k + j]);
      return m;
    });
    this.renderHeader();
    this.grid.reset(this.info.tokens.length);
  }

  private renderHeader(): void {
    const head = el("div", "gs-hm-row gs-hm-head");
    head.append(el("div", "gs-hm-label", this.features.length ? "token \\ feature" : "no active features"));
    for (const f of this.features) {
      const label = this.notes.labels.get(f);
      const cell = el("div", "gs-hm-fhead", label ? `${f} ${label}` : String(f));
      cell.dataset.f = String(f);
      if (this.notes.dense.has(f)) cell.classList.add("gs-hm-dense");
      if (f === this.cursor) cell.classList.add("gs-hm-cursor");
      cell.title = `${describeFeature(f, this.notes)}: click to colour the text by it`;
      head.append(cell);
    }
    this.grid.header.replaceChildren(head);
  }

  private renderRow(t: number): HTMLElement {
    const { prompt, token, feature } = this.selection();
    const row = el("div", "gs-hm-row");
    row.dataset.t = String(t);
    if (prompt === this.index && token === t) row.classList.add("gs-selected");
    const label = el("div", "gs-hm-label");
    label.dataset.t = String(t);
    label.append(el("span", "gs-hm-pos", String(t)));
    const tok = this.info.tokens[t];
    const span = el("span", this.info.special[t] ? "gs-token gs-special" : "gs-token", visibleText(tok));
    if (this.info.template[t] && !this.info.special[t]) span.classList.add("gs-template");
    label.append(span);
    label.title = `${t}: ${visibleText(tok)}`;
    row.append(label);
    const k = this.features.length;
    for (let j = 0; j < k; j++) {
      const f = this.features[j];
      const v = this.matrix[t * k + j];
      const cell = el("div", "gs-hm-cell");
      cell.dataset.t = String(t);
      cell.dataset.f = String(f);
      if (v > 0) cell.style.background = heatBackground(normalise(v, this.colMax[j]));
      cell.title = `#${f} · ${visibleText(tok)} · ${formatValue(v)}`;
      if (f === feature) cell.classList.add("gs-hm-col-selected");
      if (f === this.cursor) cell.classList.add("gs-hm-col-cursor");
      row.append(cell);
    }
    return row;
  }

  /** Re-colours the text by `feature` (or clears it) and redraws the selection marks. */
  showSelection(): void {
    const { prompt, token, feature } = this.selection();
    this.root.classList.toggle("gs-hm-current", prompt === this.index);
    const column = feature >= 0 && this.csr ? this.csr.column(feature) : null;
    let max = 0;
    if (column) {
      const corpus = this.maxima?.get(feature);
      max = corpus !== undefined && corpus > 0 ? corpus : column.reduce((a, b) => Math.max(a, b), 0);
    }
    this.spans.forEach((span, t) => {
      span.classList.toggle("gs-selected", prompt === this.index && token === t);
      const tok = visibleText(this.info.tokens[t]);
      if (column) {
        span.style.background = heatBackground(normalise(column[t], max));
        span.title = `${tok} · #${feature} = ${formatValue(column[t])}`;
      } else {
        span.style.background = "";
        span.title = tok;
      }
      if (this.track) {
        span.style.boxShadow = trackUnderline(this.track[t], this.trackMax);
        span.title += ` · projection ${formatValue(this.track[t])}`;
      }
    });
    for (const head of this.grid.header.querySelectorAll<HTMLElement>(".gs-hm-fhead")) {
      head.classList.toggle("gs-selected", Number(head.dataset.f) === feature);
    }
    this.grid.refresh();
    if (prompt === this.index && token >= 0) this.grid.reveal(token);
  }

  /** Moves the keyboard cursor to `feature`'s column (-1: none) and redraws the visible rows. */
  setCursor(feature: number): void {
    this.cursor = feature;
    for (const head of this.grid.header.querySelectorAll<HTMLElement>(".gs-hm-fhead")) {
      head.classList.toggle("gs-hm-cursor", Number(head.dataset.f) === feature);
    }
    this.grid.refresh();
  }

  destroy(): void {
    this.grid.destroy();
  }
}
