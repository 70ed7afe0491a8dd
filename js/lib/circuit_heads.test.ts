// @vitest-environment happy-dom
import { describe, expect, it } from "vitest";
import { traceLines } from "./circuit_heads";
import type { QKTrace } from "./protocol";

const trace: QKTrace = {
  layer: 2, head: 1, kv_head: 0, query_pos: 5, key_pos: 1, score: 1.5, probability: 0.25,
  pair_wise_contributors: [["2_7_5", "0_3_1", 0.123456], ["E_10_5", "0_3_1", -0.05]],
  top_q_marginal_contributors: [["2_7_5", 0.9]],
  top_k_marginal_contributors: [["0_3_1", -0.3]],
  node_pairs_total: 0.07, remainder: { "query bias": 0.2, "key bias": 0 },
  contributors: {
    "2_7_5": { kind: "feature", node: 3, layer: 2, pos: 5, feature: 7, label: "<img src=x onerror=alert(1)>", activation: 1 },
    "0_3_1": { kind: "feature", node: 1, layer: 0, pos: 1, feature: 3, label: "key feature", activation: 2 },
  },
};

describe("traceLines", () => {
  it("lists the pairs and marginals with their labels as text and numbers via formatValue", () => {
    const root = document.createElement("div");
    root.append(...traceLines(trace));
    const rows = root.querySelectorAll("tr.gs-ct-hd-pair");
    expect(rows).toHaveLength(2);
    expect(rows[0].textContent).toContain("0.1235");
    expect(rows[0].textContent).toContain("<img src=x onerror=alert(1)>");
    expect(rows[1].textContent).toContain("E_10_5"); // an id without a contributor record is shown as itself
    expect(root.querySelectorAll("img")).toHaveLength(0);
    expect(root.querySelector(".gs-ct-hd-q li")?.textContent).toBe("0.9  <img src=x onerror=alert(1)>");
    expect(root.querySelector(".gs-ct-hd-k li")?.className).toBe("gs-ct-neg");
    expect(root.querySelector(".gs-ct-hd-rest")?.textContent).toBe("not node pairs: query bias 0.2");
  });
});
