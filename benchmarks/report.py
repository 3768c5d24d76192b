"""Tables and the issue-3 targets from a results document (the JSON that benchmarks.run writes).

    python -m benchmarks.report benchmarks/results/full.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

QS, LS, LCS = "quantserve", "llama-server", "llama_cpp.server"


def _level(document: dict[str, Any], server: str, concurrency: int) -> Optional[dict[str, Any]]:
    for level in document["servers"].get(server, {}).get("closed_loop", []):
        if level["concurrency"] == concurrency:
            return level
    return None


def _target(name: str, measured: float, goal: str, passed: bool) -> dict[str, Any]:
    return {"target": name, "measured": round(measured, 3), "goal": goal, "met": passed}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("inf")


def evaluate_targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 3 item 5 and issue 16's vLLM pair, for every target whose servers were measured."""
    targets = []
    for concurrency in document["settings"]["concurrency"]:
        ours, theirs = _level(document, QS, concurrency), _level(document, LS, concurrency)
        if ours and theirs:
            ratio = _ratio(ours["output_throughput"], theirs["output_throughput"])
            targets.append(_target(f"tok/s vs llama-server, c={concurrency}", ratio, ">= 1.0x", ratio >= 1.0))
    ours, other = _level(document, QS, 8), _level(document, LCS, 8)
    if ours and other:
        ratio = _ratio(ours["output_throughput"], other["output_throughput"])
        targets.append(_target("tok/s vs llama_cpp.server, c=8", ratio, ">= 1.8x", ratio >= 1.8))
    ours, theirs = _level(document, QS, 8), _level(document, LS, 8)
    if ours and theirs:
        ratio = _ratio(ours["p99_ttft_ms"], theirs["p99_ttft_ms"])
        targets.append(_target("p99 TTFT vs llama-server, c=8", ratio, "<= 1.0x", ratio <= 1.0))
    for concurrency in document["settings"]["concurrency"]:  # the vLLM pair (benchmarks.run --vllm)
        ours, theirs = _level(document, "quantserve-vllm", concurrency), _level(document, "vllm", concurrency)
        if ours and theirs:
            ratio = _ratio(ours["output_throughput"], theirs["output_throughput"])
            targets.append(_target(f"vLLM backend: tok/s vs vLLM's server, c={concurrency}", ratio, ">= 1.0x",
                                   ratio >= 1.0))
            ratio = _ratio(ours["p50_ttft_ms"], theirs["p50_ttft_ms"])
            targets.append(_target(f"vLLM backend: TTFT p50 vs vLLM's server, c={concurrency}", ratio, "<= 1.0x",
                                   ratio <= 1.0))
    mixed_ours = document["servers"].get(QS, {}).get("mixed")
    mixed_theirs = document["servers"].get(LS, {}).get("mixed")
    if mixed_ours and mixed_theirs:
        ratio = _ratio(mixed_ours["streams_max_itl_ms"], mixed_theirs["streams_max_itl_ms"])
        targets.append(_target("mixed: max ITL vs llama-server", ratio, "<= 0.25x", ratio <= 0.25))
        ratio = _ratio(mixed_ours["output_throughput"], mixed_theirs["output_throughput"])
        targets.append(_target("mixed: tok/s vs llama-server", ratio, ">= 0.9x", ratio >= 0.9))
    return targets


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def foreign(workload: dict[str, Any]) -> str:
    share = workload.get("foreign_cpu_share")
    return "?" if share is None else f"{share:.0%}"


def spread(workload: dict[str, Any]) -> str:
    """The range of output tok/s over a workload's runs (the table shows their median)."""
    runs = workload.get("runs_output_throughput") or [workload["output_throughput"]]
    return f"{min(runs):.0f}-{max(runs):.0f}" if len(runs) > 1 else "-"


def cpu_cost(workload: dict[str, Any]) -> str:
    """CPU seconds the server's processes spent per 1,000 output tokens ('?' in results made before it)."""
    value = workload.get("cpu_s_per_1k_tokens")
    return "?" if value is None or value != value else f"{value:.1f}"


def closed_loop_table(document: dict[str, Any]) -> str:
    headers = ["server", "conc", "reqs", "out tok/s", "runs tok/s", "CPU s/1k tok", "req/s", "TTFT p50",
               "TTFT p99", "ITL p50", "ITL p99", "TPOT p50", "E2E p50", "E2E p99", "other CPU"]
    rows = []
    for server, outcome in document["servers"].items():
        for lv in outcome.get("closed_loop", []):
            rows.append([server, str(lv["concurrency"]), f"{lv['completed']}/{lv['num_requests']}",
                         f"{lv['output_throughput']:.1f}", spread(lv), cpu_cost(lv), f"{lv['request_throughput']:.2f}",
                         *(f"{lv[key]:.0f}" for key in ("p50_ttft_ms", "p99_ttft_ms", "p50_itl_ms",
                                                         "p99_itl_ms", "p50_tpot_ms", "p50_e2el_ms",
                                                         "p99_e2el_ms")),
                         foreign(lv)])
    return table(headers, rows)


def mixed_table(document: dict[str, Any]) -> str:
    headers = ["server", "out tok/s", "runs tok/s", "CPU s/1k tok", "streams ITL p50", "streams ITL p99",
               "streams max ITL", "long TTFT", "long E2E", "long prompt tok", "other CPU"]
    rows = []
    for server, outcome in document["servers"].items():
        mx = outcome.get("mixed")
        if mx:
            rows.append([server, f"{mx['output_throughput']:.1f}", spread(mx), cpu_cost(mx),
                         *(f"{mx[key]:.0f}" for key in ("streams_p50_itl_ms", "streams_p99_itl_ms",
                                                         "streams_max_itl_ms", "long_ttft_ms", "long_e2el_ms")),
                         str(mx["long_prompt_tokens"]), foreign(mx)])
    return table(headers, rows)


def targets_table(document: dict[str, Any]) -> str:
    rows = [[t["target"], f"{t['measured']:.2f}x", t["goal"], "yes" if t["met"] else "NO"]
            for t in document.get("targets", [])]
    return table(["target", "measured", "goal", "met"], rows)


def format_report(document: dict[str, Any]) -> str:
    """The three Markdown tables: closed loop (times in ms), mixed workload, targets."""
    machine = document["machine"]
    parts = [f"{machine['cpu_model']}, {machine['num_logical_cores']} logical cores, {machine['ram_gib']} GiB; "
             f"load at start {machine['load_average_at_start']}",
             "'other CPU': share of all cores that other processes used during the workload (noise).",
             f"Each row is the median of {document['settings'].get('repeats', 1)} interleaved runs; "
             "'runs tok/s' is the range of their output tok/s.",
             "", "Closed loop (times in ms):", closed_loop_table(document)]
    if any("mixed" in o for o in document["servers"].values()):
        parts += ["", "Mixed workload (times in ms):", mixed_table(document)]
    if document.get("targets"):
        parts += ["", "Targets (issues 3 and 16):", targets_table(document)]
    return "\n".join(parts)


if __name__ == "__main__":
    doc = json.loads(Path(sys.argv[1]).read_text())
    doc["targets"] = evaluate_targets(doc)
    print(format_report(doc))
