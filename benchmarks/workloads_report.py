"""Tables, comparisons and the plot of a `benchmarks.workloads` results document.

    python -m benchmarks.workloads_report benchmarks/results/workloads.json   # re-print, re-plot
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

from benchmarks.report import cpu_cost, foreign, spread, table

QS, LS = "quantserve", "llama-server"


def _ratio(numerator: float, denominator: float) -> Optional[float]:
    return numerator / denominator if denominator else None


def _level(section: dict[str, Any], server: str, concurrency: int) -> Optional[dict[str, Any]]:
    for level in section["servers"].get(server, {}).get("levels", []):
        if level["concurrency"] == concurrency:
            return level
    return None


def same_output_share(outputs: list[str], reference: list[str]) -> Optional[float]:
    """Share of requests whose greedy output equals the reference server's for the same prompt."""
    if not outputs or len(outputs) != len(reference):
        return None
    return sum(a == b for a, b in zip(outputs, reference)) / len(outputs)


def output_reference(name: str) -> Optional[str]:
    """Whose outputs a server's are compared with: a variant's with its base server's (speculation on
    against off), a base server's with llama-server's (default flags)."""
    if "+" in name:
        return name.partition("+")[0]
    return None if name == LS else LS


def with_comparisons(section: dict[str, Any]) -> dict[str, Any]:
    """Add quantserve's tok/s and TTFT p50 against every other server at every level, and on levels that
    kept their outputs, each server's share of outputs identical to its reference's (output_reference)."""
    comparisons = []
    for name, outcome in section["servers"].items():
        for level in outcome["levels"]:
            reference = _level(section, output_reference(name) or "", level["concurrency"])
            if "outputs" in level and reference and "outputs" in reference:
                level["same_output_as"] = output_reference(name)
                level["same_output_share"] = same_output_share(level["outputs"], reference["outputs"])
            ours = _level(section, QS, level["concurrency"])
            if name == QS or not ours:
                continue
            comparisons.append({
                "concurrency": level["concurrency"], "against": name,
                "tok_s_ratio": _ratio(ours["output_throughput"], level["output_throughput"]),
                "ttft_p50_ratio": _ratio(ours["p50_ttft_ms"], level["p50_ttft_ms"]),
                "cpu_per_token_ratio": _ratio(ours.get("cpu_s_per_1k_tokens") or 0,
                                              level.get("cpu_s_per_1k_tokens") or 0)})
    section["comparisons"] = comparisons
    return section


def _percent(part: Optional[float], whole: Optional[float]) -> str:
    return f"{part / whole:.0%}" if part is not None and whole else "-"


def _acceptance(level: dict[str, Any]) -> str:
    if "draft_tokens" not in level:
        return "-"
    return f"{_percent(level['draft_tokens_accepted'], level['draft_tokens'])} of {level['draft_tokens']}"


def levels_table(section: dict[str, Any]) -> str:
    headers = ["server", "conc", "reqs", "out tok/s", "runs tok/s", "CPU s/1k tok", "TTFT p50", "TTFT p99",
               "ITL p50", "TPOT p50", "E2E p50", "cached prompt", "drafts accepted", "same output", "other CPU"]
    rows = []
    for server, outcome in section["servers"].items():
        for lv in outcome["levels"]:
            same = lv.get("same_output_share")
            rows.append([server, str(lv["concurrency"]), f"{lv['completed']}/{lv['completed'] + lv['failed']}",
                         f"{lv['output_throughput']:.1f}", spread(lv), cpu_cost(lv),
                         *(f"{lv[key]:.0f}" for key in ("p50_ttft_ms", "p99_ttft_ms", "p50_itl_ms", "p50_tpot_ms",
                                                         "p50_e2el_ms")),
                         _percent(lv.get("cached_prompt_tokens"), lv.get("reported_prompt_tokens")),
                         _acceptance(lv), "-" if same is None else f"{same:.0%}", foreign(lv)])
    return table(headers, rows)


def comparisons_table(section: dict[str, Any]) -> str:
    rows = [[str(c["concurrency"]), c["against"], _times(c["tok_s_ratio"]), _times(c["ttft_p50_ratio"]),
             _times(c["cpu_per_token_ratio"])] for c in section.get("comparisons", [])]
    return table(["conc", "quantserve against", "tok/s (goal >= 1.0x)", "TTFT p50 (goal <= 1.0x)",
                  "CPU per token"], rows)


def _times(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_report(document: dict[str, Any]) -> str:
    settings, machine = document["settings"], document["machine"]
    parts = [f"{Path(settings['model_path']).name}, {settings['num_threads']} threads, {settings['num_parallel']} "
             f"slots; {machine['cpu_model']}, {machine['num_logical_cores']} logical cores; load at start "
             f"{machine['load_average_at_start']}",
             f"Each row is the median of {settings['repeats']} interleaved runs (times in ms). 'CPU s/1k tok': "
             "the server's process-tree CPU seconds per 1,000 output tokens. 'cached prompt': prompt tokens "
             "the server says it reused. 'same output': greedy outputs identical, for the same prompts, to "
             "those of the server without the variant flags (server+flags), or else of llama-server. 'other CPU': share of the cores other processes used (noise)."]
    for workload, section in document["workloads"].items():
        parts += ["", f"### {workload}", levels_table(section), "", comparisons_table(section)]
    return "\n".join(parts)


def plot_workloads(document: dict[str, Any], path: Path) -> Path:
    """tok/s (top) and TTFT p50 (bottom) against clients, one column per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(document["workloads"])
    figure, axes = plt.subplots(2, len(names), figsize=(max(7.0, 4.5 * len(names)), 8), squeeze=False)
    for column, workload in enumerate(names):
        for server, outcome in document["workloads"][workload]["servers"].items():
            levels = outcome["levels"]
            clients = [lv["concurrency"] for lv in levels]
            axes[0][column].plot(clients, [lv["output_throughput"] for lv in levels], marker="o", label=server)
            axes[1][column].plot(clients, [lv["p50_ttft_ms"] for lv in levels], marker="o", label=server)
        for row, ylabel in enumerate(("output tokens / s", "TTFT p50 (ms)")):
            axis = axes[row][column]
            axis.set_xscale("log", base=2)
            axis.set_xticks(document["settings"]["concurrency"], [str(c) for c in document["settings"]["concurrency"]])
            axis.set_ylim(bottom=0)
            axis.set_xlabel("concurrent clients")
            axis.set_ylabel(ylabel)
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=7)
        axes[0][column].set_title(workload)
    settings = document["settings"]
    figure.suptitle(f"{Path(settings['model_path']).name}, {settings['num_threads']} threads, "
                    f"{settings['num_parallel']} slots - {document['machine']['cpu_model']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


if __name__ == "__main__":
    source = Path(sys.argv[1])
    doc = json.loads(source.read_text())
    for each in doc["workloads"].values():
        with_comparisons(each)
    print(format_report(doc))
    print(plot_workloads(doc, source.with_suffix(".png")))
