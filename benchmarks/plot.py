"""PNG plot of a results document: throughput and p99 TTFT against concurrency, and the mixed workload.

    python -m benchmarks.plot benchmarks/results/full.json   # writes full.png next to it
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"quantserve": "tab:blue", "llama-server": "tab:orange", "llama_cpp.server": "tab:green"}


def _closed_loop_panel(axis, document: dict[str, Any], key: str, ylabel: str, title: str) -> None:
    for server, outcome in document["servers"].items():
        levels = outcome.get("closed_loop", [])
        if levels:
            axis.plot([lv["concurrency"] for lv in levels], [lv[key] for lv in levels], marker="o",
                      label=server, color=COLORS.get(server))
    concurrencies = document["settings"]["concurrency"]
    axis.set_xscale("log", base=2)
    axis.set_xticks(concurrencies, [str(c) for c in concurrencies])
    axis.set_ylim(bottom=0)
    axis.set_xlabel("concurrent clients")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend()


def _mixed_panel(axis, document: dict[str, Any]) -> None:
    servers = [s for s, o in document["servers"].items() if "mixed" in o]
    mixed = [document["servers"][s]["mixed"] for s in servers]
    positions = range(len(servers))
    width = 0.38
    axis.bar([p - width / 2 for p in positions], [m["streams_p99_itl_ms"] for m in mixed], width, label="ITL p99")
    axis.bar([p + width / 2 for p in positions], [m["streams_max_itl_ms"] for m in mixed], width, label="max ITL")
    for container in axis.containers:
        axis.bar_label(container, fmt="%.0f", fontsize=8)
    axis.set_xticks(list(positions), [f"{s}\nlong TTFT {m['long_ttft_ms'] / 1000:.1f} s" for s, m in zip(servers, mixed)])
    axis.set_yscale("log")  # stalls span milliseconds to seconds
    axis.set_ylabel("ms (log scale)")
    num_slots = document["settings"].get("mixed_num_parallel", "?")
    axis.set_title(f"mixed: running streams' stalls ({num_slots} slots)\n8 streams + 1,500-token prompt at 1.5 s")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend()


def _max_foreign(document: dict[str, Any]) -> float:
    shares = [w.get("foreign_cpu_share", 0.0) for o in document["servers"].values()
              for w in [*o.get("closed_loop", []), *([o["mixed"]] if "mixed" in o else [])]]
    return max(shares, default=0.0)


def plot_results(document: dict[str, Any], path: Path) -> Path:
    """Write the plot for `document` to `path` and return it."""
    has_mixed = any("mixed" in o for o in document["servers"].values())
    figure, axes = plt.subplots(1, 3 if has_mixed else 2, figsize=(16 if has_mixed else 11, 4.8))
    _closed_loop_panel(axes[0], document, "output_throughput", "output tokens / s", "throughput (higher is better)")
    _closed_loop_panel(axes[1], document, "p99_ttft_ms", "p99 TTFT (ms)", "p99 time to first token (lower is better)")
    if has_mixed:
        _mixed_panel(axes[2], document)
    machine = document["machine"]
    settings = document["settings"]
    figure.suptitle(f"{Path(settings['model_path']).name}, {settings['num_threads']} threads, {settings['max_tokens']} output tokens "
                    f"- {machine['cpu_model']} ({machine['num_logical_cores']} cores)"
                    f"; other processes used <= {_max_foreign(document):.0%} CPU", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


if __name__ == "__main__":
    source = Path(sys.argv[1])
    print(plot_results(json.loads(source.read_text()), source.with_suffix(".png")))
