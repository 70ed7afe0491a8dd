"""The results file (``latest.json``) and its markdown table (``latest.md``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def case_table(case: dict[str, Any]) -> list[str]:
    lines = [f"### {case['title']}", ""]
    if case.get("error"):
        lines += [f"Not measured: `{_cell(case['error'])}`", ""]
    if case.get("baseline"):
        lines += [f"Baseline: {case['baseline']}. Ratio: {case.get('ratio_meaning', 'value / baseline')}.", ""]
    rows = case.get("rows", [])
    if rows:
        lines += [
            "| path | dtype | value | ratio | % of hw limit | notes |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            if row.get("error"):
                value, ratio, pct, note = "—", "—", "", f"`{_cell(row['error'])}`"
            else:
                value = f"{_fmt(row.get('value'))} {row.get('unit', '')}".strip()
                ratio = _fmt(row.get("ratio"))
                pct = _fmt(row.get("pct_of_peak"), 2)
                note = _cell(row.get("note", ""))
            lines.append(f"| {_cell(row['name'])} | {row.get('dtype', '')} | {value} | {ratio} | {pct} | {note} |")
        lines.append("")
    for target in case.get("targets", []):
        met = target.get("met")
        mark = "n/a" if met is None else ("met" if met else "**missed**")
        lines.append(f"- target: {target['text']} → {mark} ({target.get('measured', '')})")
    if case.get("targets"):
        lines.append("")
    return lines


def external_table(name: str, result: dict[str, Any]) -> list[str]:
    lines = [f"### {name} (its own benchmark module)", ""]
    if "error" in result and len(result) == 1:
        return [*lines, f"Not measured: `{_cell(str(result['error']))}`", ""]
    lines += ["| key | value |", "|---|---|"]
    for key, value in result.items():
        shown = json.dumps(value, default=str) if isinstance(value, (dict, list)) else _fmt(value)
        lines.append(f"| {_cell(str(key))} | {_cell(shown)} |")
    return [*lines, ""]


def profile_table(name: str, prof: dict[str, Any]) -> list[str]:
    lines = [f"### Profile: {name} (torch.profiler, self CPU time per call)", ""]
    if "error" in prof:
        return [*lines, f"Not profiled: `{_cell(prof['error'])}`", ""]
    stages = sorted(prof["stages_ms"].items(), key=lambda kv: -kv[1])
    lines.append(f"Total {prof['total_self_ms']:.1f} ms: " + ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in stages))
    lines += ["", "| op | input shapes | self ms | share | calls |", "|---|---|---|---|---|"]
    for op in prof["top_ops"][:10]:
        lines.append(
            f"| {op['op']} | {_cell(op['shapes'])} | {op['self_ms']:.2f} | {100 * op['share']:.0f}% | {op['calls']} |"
        )
    return [*lines, ""]


def _find(rows: list[dict[str, Any]], prefix: str, dtype: str | None = None) -> dict[str, Any] | None:
    for row in rows:
        if row["name"].startswith(prefix) and (dtype is None or row.get("dtype") == dtype):
            return row
    return None


def _show(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    if "error" in row:
        return "error" if not row["error"].startswith("not installed") else "not installed"
    return f"{_fmt(row['value'])} {row.get('unit', '')}".strip()


def _targets_text(case: dict[str, Any], dtype: str | None) -> str:
    marks = []
    for target in case.get("targets", []):
        if dtype is not None and not target["text"].startswith(dtype):
            continue
        met = target.get("met")
        marks.append(f"{'n/a' if met is None else ('met' if met else '**missed**')} ({target.get('measured', '')})")
    return "; ".join(marks)


def summary_table(results: dict[str, Any]) -> list[str]:
    """One line per headline comparison: ours, the plain-HF baseline, the ratio, and the peers."""
    cases = results["cases"]
    lines = [
        "| case | dtype | ours | plain HF baseline | ours / baseline "
        "| TransformerLens (+SAELens) | nnsight | targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    spec = (
        ("features", "features, 128-token prompt", "ours", "HF early exit (hook raises)", "TransformerLens", "nnsight"),
        (
            "generation",
            "steered generation",
            "ours: generate, steered",
            "HF generate, no hooks",
            "TransformerLens",
            "nnsight",
        ),
        ("scan", "corpus scan", "ours", "bare early-exit", None, None),
    )
    for key, title, ours_p, base_p, tl_p, nn_p in spec:
        case = cases.get(key)
        if not case:
            continue
        for dtype in ("fp32", "bf16"):
            rows = case["rows"]
            ours = _find(rows, ours_p, dtype)
            base = _find(rows, base_p, dtype)
            ratio = _fmt(ours.get("ratio")) + "×" if ours and "ratio" in ours else "—"
            tl = _show(_find(rows, tl_p, dtype)) if tl_p else ""
            nn = _show(_find(rows, nn_p, dtype)) if nn_p else ""
            lines.append(
                f"| {title} | {dtype} | {_show(ours)} | {_show(base)} | {ratio} | {tl} | {nn} | "
                f"{_cell(_targets_text(case, dtype))} |"
            )
    payload = cases.get("payload")
    if payload:
        sizes = ", ".join(f"{r['name'].split(', ')[-1]}: {_show(r)}" for r in payload["rows"])
        lines.append(f"| widget payload (16k SAE) | fp32 | {sizes} | | | | | {_cell(_targets_text(payload, None))} |")
    load = cases.get("load")
    if load:
        rows = load["rows"]
        for suffix, what in (("", "load time"), (" peak RSS", "load peak RSS")):
            ours = next((r for r in rows if r["name"] == "ours: load_model (embedded default)" + suffix), None)
            base = next((r for r in rows if r["name"] == "HF AutoTokenizer + AutoModelForCausalLM" + suffix), None)
            tl = next(
                (r for r in rows if r["name"] == "TransformerLens (HF + from_pretrained_no_processing)" + suffix), None
            )
            ratio = _fmt(ours.get("ratio")) + "×" if ours and "ratio" in ours else "—"
            target = _cell(_targets_text(load, None)) if suffix else ""
            lines.append(f"| {what} | fp32 | {_show(ours)} | {_show(base)} | {ratio} | {_show(tl)} | | {target} |")
    return [*lines, ""]


def render_markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    hw = results.get("hardware", {})
    lines = [
        f"# Benchmarks ({'smoke' if results['config'].get('smoke') else 'full run'})",
        "",
        f"- date: {results['date']}",
        f"- machine: {machine.get('cpu')} ({', '.join(machine.get('cpu_flags', []))}), "
        f"{machine.get('logical_cores')} logical cores, {machine.get('memory_gib')} GiB RAM, "
        f"torch threads {machine.get('torch_threads')}",
        f"- software: Python {machine.get('python')}, torch {machine.get('torch')}, "
        f"transformers {machine.get('transformers')}, "
        + ", ".join(f"{k} {v}" for k, v in results.get("peer_versions", {}).items()),
        f"- model: {results['config'].get('model')}; SAE: {results['config'].get('sae')}; "
        f"prompt: {results['config'].get('prompt_tokens')} tokens; "
        f"timings: median of {results['config'].get('repeats')} after {results['config'].get('warmup')} warm-up",
        f"- measured matmul: fp32 {_fmt(hw.get('fp32_gflops'))} GFLOP/s, bf16 {_fmt(hw.get('bf16_gflops'))} GFLOP/s "
        f"({hw.get('matmul', '')})",
        "- paths of one case are timed round-robin in one process, so their ratios hold under machine load; "
        "absolute times do not (a low measured matmul rate means other processes shared the cores)",
        "",
        "## Summary",
        "",
        *summary_table(results),
        "## Details",
        "",
    ]
    for case in results["cases"].values():
        lines += case_table(case)
    for name, result in results.get("external", {}).items():
        lines += external_table(name, result)
    for name, prof in results.get("profiles", {}).items():
        lines += profile_table(name, prof)
    return "\n".join(lines).rstrip() + "\n"


def write_results(results: dict[str, Any], folder: Path = RESULTS_DIR) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "latest.json"
    md_path = folder / "latest.md"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path.write_text(render_markdown(results))
    return json_path, md_path
