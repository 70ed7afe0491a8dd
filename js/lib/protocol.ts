// The one declaration of what crosses between the kernel and the browser, per widget:
//
//   <Widget>Model     the synced traits of the Python class named in its `@widget` tag (what model.get sees)
//   <Widget>Message   the custom messages the view sends (model.send), one `{ type: "..."; ... }` per line
//                     ("ping" in every widget: the liveness check of lib/live.ts, answered by KernelMessage);
//                     the Python class declares the same table in its MESSAGES and parses with
//                     gemscope_widgets/widgets/messages.py
//
// tests/widgets/test_protocol.py reads this file and fails when a trait or a message differs on either side,
// so a change is made here and in Python together. Keep to the simple shapes that test can read: one field per
// line in a `@widget` interface; one message per `|` line. Shared value types (payload layout, entries) follow.

import type { Bytes } from "./sparse";

// --- value types --------------------------------------------------------------------------------------------

/** Where one array lies in the payload blob. */
export interface ArrayRef {
  offset: number;
  length: number;
  dtype: "uint16" | "uint32" | "float16" | "float32";
}

/** One prompt as the heatmap payload describes it: token strings and per-token flags. */
export interface PromptInfo {
  tokens: string[];
  special: boolean[];
  template: boolean[];
  chat: boolean;
}

/** The JSON header of the heatmap payload (payload.py's encode_payload): where each array lies in `_data`. */
export interface PayloadHeader {
  version: number;
  top_k: number | null;
  saes: {
    name: string;
    width: number;
    id_dtype: string;
    feature_max: { ids: ArrayRef; values: ArrayRef } | null;
  }[];
  prompts: PromptInfo[];
  blocks: {
    prompt: number;
    sae: number;
    n_tokens: number;
    nnz: number;
    clamped: number;
    indptr: ArrayRef;
    indices: ArrayRef;
    values: ArrayRef;
  }[];
  bytes: number;
}

export type RankBy = "specific" | "max" | "sum";

/** What the heatmap knows about features beyond the payload (heatmap.py's feature_info): per SAE index. */
export interface FeatureInfo {
  dense_above?: number;
  [sae: string]: { density: Record<string, number>; labels: Record<string, string> } | number | undefined;
}

export interface PaneExample {
  tokens: string[];
  values: Bytes; // float32
  peak: number;
  value: number;
}
export interface PaneExamplePage {
  kind?: "top" | "quantile";
  start?: number;
  total?: number;
  items?: PaneExample[];
}
export interface PaneInfo {
  sae?: string;
  dictionary?: string; // "SAE", "transcoder", "cross-layer transcoder" or "crosscoder" (registry.py)
  width?: number;
  url?: string;
  explanation?: string;
  label?: string; // the automatic label (labels.py), shown where there is no explanation
  density?: number | null;
  max_act?: number | null;
  n_tokens?: number;
  source?: string;
  score?: PaneLabelScore | null; // how well the shown label fits (label_scores.py)
}
/** A label's score as the pane shows it (feature_pane.py's card_traits, from LabelScore). */
export interface PaneLabelScore {
  label: string;
  source: string;
  simulation: number | null;
  precision: number | null;
  recall: number | null;
  n_active: number;
  n_tokens: number;
  imported: [string, number][];
  reason: string;
}
/** The search box's result (feature_pane.py's ``found``, from search.py's SearchHit). */
export interface PaneFound {
  query?: string;
  hits?: {
    feature: number;
    score: number;
    label: string;
    source: string;
    simulation: number | null;
    imported: [string, number][];
  }[];
  error?: string;
  /** How many searches the pane has answered (a repeated query still changes ``found``). */
  search?: number;
  /** While a search works (the first one labels every feature): what it is doing; absent in an answer. */
  progress?: string;
}
export interface PaneRelated {
  feature: number;
  score: number;
  kind: string;
  explanation: string; // the explanation, or the automatic label where there is none
  density: number | null;
}
/** The family tree across widths (card.py's AcrossWidths); {} without a companion dictionary. */
export interface PaneFamily {
  sae?: string;
  width?: number;
  relation?: "narrower" | "wider";
  total?: number;
  rows?: { feature: number; cosine: number; coactivation: number | null; explanation: string }[];
}
export interface PaneTest {
  text?: string;
  tokens?: string[];
  special?: boolean[];
  values?: Bytes; // float32
  error?: string;
}
export interface PaneScan {
  state?: "idle" | "running" | "done" | "error";
  done?: number;
  total?: number;
  message?: string;
}
export interface PaneLogits {
  top?: [string, number][];
  bottom?: [string, number][];
}
export interface PaneHistogram {
  edges?: Bytes; // float32 [n + 1]
  counts?: Bytes; // float32 [n]
}

/** One steered feature or direction (SteeringSession's Entry.describe()). */
export interface SteerFeature {
  key: number | string; // the feature index, or "d0", "d1", ... for a direction
  kind: "feature" | "direction";
  label: string;
  feature?: number; // features only
  feature_label?: string; // features only (a Steer built from a Scope): the explanation or automatic label
  layer?: number | null; // directions only: where an added direction goes
  multiple: number;
  mode: "add" | "clamp" | "ablate";
  positions: "all" | "prompt" | "generated";
  scale: number;
  scale_source: string; // the unit's kind: "quantile", "site norm", "length", "fraction" or "raw"
  unit_source: string; // where the unit came from, for people
  raw: number;
}
export interface SteerSettings {
  max_new_tokens: number;
  temperature: number;
  top_p: number;
  seed: number;
  frequency_penalty: number;
  stop_at_eos: boolean;
  steer_special_tokens: boolean;
  error: "keep" | "replace";
}
export interface SteerNextToken {
  column?: string;
  index?: number;
  context?: string;
  chosen?: string;
  tokens?: string[];
  baseline?: number[];
  steered?: number[];
}

// --- widgets ------------------------------------------------------------------------------------------------

/** @widget gemscope_widgets.widgets.heatmap.Heatmap */
export interface HeatmapModel {
  _header: PayloadHeader;
  _data: Bytes;
  sae_index: number;
  top_n: number;
  rank_by: "specific" | "max" | "sum";
  feature_info: FeatureInfo;
  list_k: number;
  selected_prompt: number;
  selected_feature: number;
  selected_token: number;
  _track: Bytes;
  track_label: string;
  level: number;
  levels: number[][];
  nested: boolean[]; // per SAE: trained nested (Matryoshka), so its first latents are a coarse level
}

/** @messages gemscope_widgets.widgets.heatmap.Heatmap */
export type HeatmapMessage = { type: "ping" };

/** @widget gemscope_widgets.widgets.feature_pane.FeaturePane */
export interface FeaturePaneModel {
  feature: number;
  info: PaneInfo;
  logits: PaneLogits;
  histogram: PaneHistogram;
  related: PaneRelated[];
  family: PaneFamily;
  examples: PaneExamplePage;
  quantiles: PaneExamplePage;
  test: PaneTest;
  scan: PaneScan;
  page_size: number;
  can_steer: boolean;
  error: string;
  found: PaneFound;
}

/** @messages gemscope_widgets.widgets.feature_pane.FeaturePane */
export type FeaturePaneMessage =
  | { type: "open"; feature: number }
  | { type: "page"; kind: "top" | "quantile"; start: number }
  | { type: "test"; text: string }
  | { type: "scan" }
  | { type: "steer" }
  | { type: "search"; query: string }
  | { type: "open_across"; feature: number }
  | { type: "ping" };

/** @widget gemscope_widgets.widgets.steer.Steer */
export interface SteerModel {
  sae_name: string;
  prompt_tokens: string[];
  prompt_special: boolean[];
  chat: boolean;
  features: SteerFeature[];
  directions: SteerFeature[];
  unit: "typical" | "raw";
  strength_range: number[];
  note: string;
  settings: SteerSettings;
  baseline_tokens: string[];
  steered_tokens: string[];
  divergence: number;
  running: boolean;
  status: string;
  generation_id: number;
  next_token: SteerNextToken;
  error: string;
  applied_request: number;
}

/** @messages gemscope_widgets.widgets.steer.Steer */
export type SteerMessage =
  | { type: "set"; feature: number; key: "multiple" | "mode" | "positions"; value: number | string; request: number }
  | { type: "set_direction"; direction: string; key: "multiple" | "mode" | "positions" | "layer"; value: number | string; request: number }
  | { type: "add"; feature: number }
  | { type: "remove"; feature: number }
  | { type: "remove_direction"; direction: string }
  | { type: "settings"; values: Record<string, number | boolean | string> }
  | { type: "unit"; value: "typical" | "raw" }
  | { type: "range"; min: number; max: number }
  | { type: "next"; index: number; column: "baseline" | "steered" }
  | { type: "run" }
  | { type: "ping" };

/** @widget gemscope_widgets.widgets.token_view.TokenView */
export interface TokenViewModel {
  tokens: string[];
  special: boolean[];
  selected_token: number;
  status: string;
}

/** @messages gemscope_widgets.widgets.token_view.TokenView */
export type TokenViewMessage = { type: "ping" };

/** One feature key of a graph comparison (backend/circuits/comparison.KeyChange). */
export interface ComparedFeature {
  label: string;
  influence_a: number;
  influence_b: number;
  kept_a: boolean;
  kept_b: boolean;
  delta: number; // influence_b - influence_a
}

/** An edge only one graph keeps (comparison.EdgeChange), its ends labelled. */
export interface ComparedEdge {
  source: string;
  target: string;
  weight_a: number;
  weight_b: number;
}

/** widgets/graph_comparison.comparison_payload. */
export interface GraphComparisonData {
  prompt_a: string;
  prompt_b: string;
  thresholds: [number, number];
  overlap: number;
  weighted_overlap: number;
  only_a: ComparedFeature[];
  only_b: ComparedFeature[];
  shared: ComparedFeature[];
  largest_changes: ComparedFeature[];
  edges_only_a: ComparedEdge[];
  edges_only_b: ComparedEdge[];
}

/** @widget gemscope_widgets.widgets.graph_comparison.GraphComparisonView */
export interface GraphComparisonModel {
  _comparison: GraphComparisonData | Record<string, never>;
}

/** @messages gemscope_widgets.widgets.graph_comparison.GraphComparisonView */
export type GraphComparisonMessage = { type: "ping" };

/** What every widget's kernel side sends to its view: the answer to "ping" (lib/live.ts). */
export type KernelMessage = { type: "pong" };

/** One message of a conversation as the kernel checked it (a model turn's role is "assistant"). */
export interface ChatTurnMessage {
  role: string;
  content: string;
}
/** A turn located in the tokens, with its strongest features (behaviour/conversation.py's Turn). */
export interface ChatTurn {
  role: string;
  message: number; // -1 for the open generation prompt
  start: number;
  end: number;
  content_start: number;
  content_end: number;
  message_start: number; // after a folded system message
  summary: { feature: number; max: number; mean: number; label?: string }[]; // label: explanation or automatic
}
export interface ChatView {
  tokens?: string[];
  special?: boolean[];
  template?: boolean[];
  turns?: ChatTurn[];
  sae_names?: string[];
  track_label?: string;
  system?: string;
  labels?: Record<string, string>; // feature -> explanation or automatic label, for the selected features' chips
}

/** @widget gemscope_widgets.widgets.chat.Chat */
export interface ChatModel {
  messages: ChatTurnMessage[];
  features: number[];
  sae_index: number;
  _view: ChatView;
  _heat: Bytes;
  _track: Bytes;
  streaming: string[];
  running: boolean;
  status: string;
  error: string;
  warning: string;
}

/** @messages gemscope_widgets.widgets.chat.Chat */
export type ChatMessage =
  | { type: "continue" }
  | { type: "add"; content: string }
  | { type: "stop" }
  | { type: "edit"; message: number; content: string }
  | { type: "toggle"; feature: number }
  | { type: "ping" };

export interface ContrastSide {
  tokens: string[];
  special: boolean[];
  template: boolean[];
  span: number[];
}
export interface ContrastRow {
  feature: number;
  label?: string; // the feature's explanation, or its automatic label
  diff: number;
  a: number;
  b: number;
  t?: number;
  stderr?: number;
}
export interface ContrastInfo {
  a?: ContrastSide;
  b?: ContrastSide;
  rows?: ContrastRow[];
  span?: string;
  reduce?: string;
  sae_name?: string;
  n_pairs?: number;
  /** Why a single pair's ranking needs care (backend SINGLE_PAIR_CAVEAT); null for several pairs. */
  caveat?: string | null;
}

/** @widget gemscope_widgets.widgets.contrast.ContrastView */
export interface ContrastViewModel {
  _view: ContrastInfo;
  _heat_a: Bytes;
  _heat_b: Bytes;
  selected_feature: number;
  can_steer: boolean;
  error: string;
}

/** @messages gemscope_widgets.widgets.contrast.ContrastView */
export type ContrastViewMessage =
  | { type: "steer"; feature: number }
  | { type: "ping" };

export interface ProbeDetector {
  name: string; // "SAE probe" | "dense probe" | "difference of means"
  title: string;
  auroc: number;
  low: number;
  high: number;
  n_held_out: number;
}
export interface ProbeFeatureRow {
  feature: number;
  label: string;
  density: number | null; // fraction of corpus tokens it fires on
  auroc: number;
  low: number;
  high: number;
  mean_difference: number;
  chosen_in: number;
  n_held_out: number;
}
/** One ROC curve in _roc (float32): `n` false positive rates at `offset`, then `n` true positive rates. */
export interface ProbeRocCurve {
  name: string;
  feature: number; // -1 for the three probes
  offset: number;
  n: number;
}
export interface ProbeInfo {
  sae_name?: string;
  layer?: number;
  position?: string;
  k?: number;
  seed?: number;
  n_positive?: number;
  n_negative?: number;
  scheme?: string;
  n_folds?: number;
  detectors?: ProbeDetector[];
  features?: ProbeFeatureRow[];
  /** The latent with the highest held-out AUROC alone (shown when none is selected); -1 for none. */
  best?: number;
  curve?: { sizes: number[]; values: Record<string, number[]> };
  roc?: ProbeRocCurve[];
}

/** @widget gemscope_widgets.widgets.probe.ProbeView */
export interface ProbeViewModel {
  _view: ProbeInfo;
  _roc: Bytes;
  selected_feature: number;
  can_steer: boolean;
  error: string;
}

/** @messages gemscope_widgets.widgets.probe.ProbeView */
export type ProbeViewMessage =
  | { type: "steer"; feature: number }
  | { type: "ping" };

// --- typed sending ------------------------------------------------------------------------------------------

/** The part of anywidget's model that sends custom messages. */
interface Sender {
  send(content: unknown, callbacks?: unknown, buffers?: ArrayBuffer[] | ArrayBufferView[]): void;
}

/** `model.send(message)` checked against the widget's message union: `sendMessage<SteerMessage>(model, {...})`. */
export function sendMessage<M extends { type: string }>(model: Sender, message: M): void {
  model.send(message);
}

// --- circuit (widgets/circuit.py) -----------------------------------------------------------------------------

/** The JSON header of the circuit payload (circuit.py's encode_graph): graph facts and where each array lies. */
export interface CircuitHeader {
  version: number;
  prompt: string;
  tokens: string[];
  logit_tokens: string[];
  logit_probabilities: number[];
  n_layers: number;
  n_nodes_total: number;
  n_edges_total: number;
  n_nodes: number;
  n_edges: number;
  nodes: Record<"kind" | "layer" | "pos" | "feature" | "node" | "activation" | "influence" | "rank", ArrayRef> & {
    kept?: ArrayRef; // 1 on the nodes graph.prune(pruned thresholds) keeps
    focus?: ArrayRef; // 1 on the legible subgraph's nodes (backend/circuits/legible_subgraph.py)
  };
  edges: Record<"source" | "target" | "weight" | "rank", ArrayRef> & { kept?: ArrayRef };
  /** The thresholds the `kept` flags were computed at, and prune()'s node and edge counts there. */
  pruned?: { node_threshold: number; edge_threshold: number; n_nodes: number; n_edges: number };
  /** Kept edges a `max_edges` cap did not send, and why (null: nothing left out). */
  left_out?: { edges: number; reason: string } | null;
  labels: Record<string, string>;
  top_logits: Record<string, [string, number][]>;
  /** The whole graph's scores (graph.scores()) and the score matrix the view recomputes pinned scores from. */
  scores?: CircuitScores;
  /** The legible subgraph at the pruned thresholds: its top logit, its feature / error nodes and prune()'s. */
  focus?: { logit_token: string; n_chosen: number; n_pruned: number };
  model: string;
  scan: string;
  bytes: number;
}

/** backend/circuits/score_matrix.ScoreMatrix in the payload: COO over [candidates, errors, tokens, logits]. */
export interface CircuitScores {
  replacement: number;
  completeness: number;
  candidates: ArrayRef; // graph node indices of the features whose pinning is scored live
  rows: ArrayRef;
  cols: ArrayRef;
  values: ArrayRef;
  candidate_error: ArrayRef; // each candidate's error node + 1 (0: none; removed without merging)
  logit_weights: number[];
  n_errors: number;
  n_tokens: number;
  scope: string; // which features are candidates, in words
}

/** Where Circuit._kept was computed (circuit_payload.kept_flags) and what the payload lacks of that pruning. */
export interface KeptAt {
  node_threshold: number;
  edge_threshold: number;
  n_nodes: number;
  n_edges: number;
  left_out: { nodes: number; edges: number; reason: string } | null;
}

/** The last intervention (Circuit.intervention): probabilities before and after, per token. */
export interface CircuitIntervention {
  state?: "running" | "done" | "error";
  nodes?: number[];
  mode?: string;
  value?: number;
  rows?: [string, number | null, number | null][];
  changed?: [string, number, number][]; // per intervened feature: label, activation on the prompt, value set
  message?: string;
}

/** A supernode read as one node (node_summary.group_summaries): summed influence, summed edges to the payload's
 * nodes in no group (`[payload index, weight]`) and to the other groups. */
export interface CircuitGroup {
  name: string;
  members: number[]; // graph node indices
  influence: number;
  outputs: [number, number][];
  inputs: [number, number][];
  to: Record<string, number>;
}

/** @widget gemscope_widgets.widgets.circuit.Circuit */
export interface CircuitModel {
  _header: CircuitHeader;
  _data: Bytes;
  _kept: Bytes; // graph.prune() at _kept_at's thresholds: a byte per payload node, then per payload edge
  _kept_at: KeptAt | Record<string, never>;
  node_threshold: number;
  edge_threshold: number;
  selected: number[];
  pinned: number[];
  clicked: number;
  show_all: boolean; // false: the legible subgraph only (said on screen)
  supernodes: Record<string, number[]>; // graph.supernodes: name -> graph node indices
  _groups: CircuitGroup[];
  group_message: string;
  suggestions: CircuitSuggestions | Record<string, never>; // graph.suggest_groups at `at`'s thresholds
  intervention: CircuitIntervention;
}

/** The circuit view's suggested groups (Circuit.suggestions): graph.suggest_groups at the thresholds `at`. */
export interface CircuitSuggestions {
  state: "done" | "error";
  at: [number, number];
  items: { name: string; members: number[]; retention: number; influence: number; cosine: number }[];
  dropped: number; // groups left out for keeping too little of their members' influence
  message: string;
  request: number; // counts the requests, so a repeated answer still reaches the view
}

/** @messages gemscope_widgets.widgets.circuit.Circuit */
export type CircuitMessage =
  | { type: "intervene"; mode: "set" | "scale"; value: number }
  | { type: "group"; name: string }
  | { type: "ungroup"; name: string }
  | { type: "suggest_groups" }
  | { type: "accept_suggestion"; index: number }
  | { type: "edge_heads"; source: number; target: number; request: number }
  | { type: "head_qk"; layer: number; head: number; query_pos: number; key_pos: number; request: number }
  | { type: "ping" };

/** One contributor of a QK split (backend/circuits/qk.QKAttribution.to_dict()'s `contributors`). */
export interface QKContributor {
  kind: string;
  node: number;
  layer: number;
  pos: number;
  feature: number;
  label: string;
  activation: number | null;
}

/** backend/circuits/qk.QKAttribution.to_dict(): Neuronpedia's qk_tracing_results lists plus the score's split. */
export interface QKTrace {
  layer: number;
  head: number;
  kv_head: number;
  query_pos: number;
  key_pos: number;
  score: number;
  probability: number;
  pair_wise_contributors: [string, string, number][];
  top_q_marginal_contributors: [string, number][];
  top_k_marginal_contributors: [string, number][];
  node_pairs_total: number;
  remainder: Record<string, number>;
  contributors: Record<string, QKContributor>;
}

/** The circuit kernel's answer to one "edge_heads" / "head_qk" request (widgets/circuit_heads.py); `error`: the
 * backend's short message instead of a result. */
export type CircuitReply =
  | {
      type: "edge_heads"; request: number; source: number; target: number; error?: string;
      weight?: number; heads?: [number, number, number][]; rest?: number; n_heads?: number; rule?: string;
    }
  | {
      type: "head_qk"; request: number; layer: number; head: number; query_pos: number; key_pos: number;
      error?: string; row?: number[]; qk?: QKTrace;
    };
