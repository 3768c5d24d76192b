"""tok/s against model size: the closed-loop workload of `benchmarks.run` on SmolLM2-135M and on GGUFs in
the exact shape of Qwen2.5-0.5B and Llama-3.2-1B (benchmarks/shapes.py: real architecture, tokenizer and
tensor sizes, random Q4_K_M weights), quantserve against llama-server, 1 and 8 clients.

    python -m benchmarks.sizes            # 3 models x 2 servers x (1, 8 clients) x 3 runs (~12 min)
    python -m benchmarks.sizes --quick    # one run each, fewer requests (~4 min; the first run also
                                          # makes the two GGUFs, ~3 min)

One `benchmarks.run` per model (results/<name>-<model>.json, its own tables), then one table and plot of
all of them: results/<name>.json and <name>.png (default name `sizes` or `sizes-quick`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import run
from benchmarks.plot import COLORS
from benchmarks.report import cpu_cost, foreign, spread, table
from benchmarks.shapes import SHAPES, shape_model

SMOLLM2_PARAMS_B = 0.135


def models(keys: list[str]) -> list[dict[str, Any]]:
    """Each model: key, parameters (billions), GGUF path (the shapes made on first use)."""
    from serve.models.catalog import embedded_model_path

    chosen = []
    for key in keys:
        if key == "smollm2-135m":
            chosen.append({"key": key, "params_b": SMOLLM2_PARAMS_B, "path": str(embedded_model_path())})
        else:
            chosen.append({"key": key, "params_b": SHAPES[key].num_params_b, "path": str(shape_model(key))})
    for model in chosen:
        model["file_bytes"] = Path(model["path"]).stat().st_size
    return chosen


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run per level, 2 requests per client")
    parser.add_argument("--models", default="smollm2-135m," + ",".join(SHAPES),
                        help="comma-separated: smollm2-135m and the shapes " + ", ".join(SHAPES))
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--repeats", type=int, help="interleaved runs per level (default 3; --quick: 1)")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--max-attempts", type=int, default=3, help="as benchmarks.run's")
    parser.add_argument("--quiet-wait-s", type=float, default=120.0, help="as benchmarks.run's")
    parser.add_argument("--name", help="results file stem (default: sizes or sizes-quick)")
    args = parser.parse_args(argv)
    args.name = args.name or ("sizes-quick" if args.quick else "sizes")
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


def run_one(model: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """benchmarks.run's closed loop on one model; returns its results document."""
    name = f"{args.name}-{model['key']}"
    argv = ["--servers", "quantserve,llama-server", "--concurrency", args.concurrency, "--no-mixed",
            "--repeats", str(args.repeats), "--model-path", model["path"], "--name", name, "--ctx", "2048",
            "--max-tokens", str(args.max_tokens), "--max-attempts", str(args.max_attempts),
            "--quiet-wait-s", str(args.quiet_wait_s),
            "--requests-per-client", "2", "--min-requests", "4" if args.quick else "8"]
    run.main(argv)
    return json.loads((run.RESULTS_DIR / f"{name}.json").read_text())


def sizes_table(document: dict[str, Any]) -> str:
    rows = []
    for model in document["models"]:
        for server, outcome in model["servers"].items():
            for lv in outcome.get("closed_loop", []):
                rows.append([model["key"], f"{model['params_b']:.2f}", f"{model['file_bytes'] / 2**20:.0f}", server,
                             str(lv["concurrency"]), f"{lv['output_throughput']:.1f}", spread(lv), cpu_cost(lv),
                             f"{lv['p50_ttft_ms']:.0f}", f"{lv['p50_tpot_ms']:.1f}", foreign(lv)])
    return table(["model", "params B", "MiB", "server", "conc", "out tok/s", "runs tok/s", "CPU s/1k tok",
                  "TTFT p50", "TPOT p50", "other CPU"], rows)


def ratios_table(document: dict[str, Any]) -> str:
    rows = []
    for model in document["models"]:
        ours = {lv["concurrency"]: lv for lv in model["servers"].get("quantserve", {}).get("closed_loop", [])}
        for lv in model["servers"].get("llama-server", {}).get("closed_loop", []):
            if lv["concurrency"] in ours:
                ratio = ours[lv["concurrency"]]["output_throughput"] / lv["output_throughput"]
                rows.append([model["key"], str(lv["concurrency"]), f"{ratio:.2f}x", "yes" if ratio >= 1.0 else "NO"])
    return table(["model", "conc", "quantserve / llama-server tok/s", ">= 1.0x"], rows)


def plot_sizes(document: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.8))
    series: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for model in document["models"]:
        for server, outcome in model["servers"].items():
            for lv in outcome.get("closed_loop", []):
                series.setdefault((server, lv["concurrency"]), []).append((model["params_b"], lv["output_throughput"]))
    for (server, clients), points in sorted(series.items()):
        points.sort()
        axis.plot(*zip(*points), marker="o", color=COLORS.get(server), linestyle="-" if clients == 1 else "--",
                  label=f"{server}, {clients} client{'s' if clients > 1 else ''}")
    for model in document["models"]:
        axis.annotate(model["key"], (model["params_b"], 0), textcoords="offset points", xytext=(0, 4),
                      fontsize=7, ha="center")
    axis.set_xlabel("parameters (billions), Q4 GGUF")
    axis.set_ylabel("output tokens / s")
    axis.set_ylim(bottom=0)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(f"tok/s against model size - {document['machine'].get('cpu_model', '')}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    document: dict[str, Any] = {"name": args.name, "command": "python -m benchmarks.sizes " + " ".join(
        argv if argv is not None else sys.argv[1:]), "models": []}
    for model in models([k for k in args.models.split(",") if k]):
        result = run_one(model, args)
        document["machine"] = result["machine"]
        document["models"].append({**model, "result_file": f"{args.name}-{model['key']}.json",
                                   "settings": result["settings"], "servers": result["servers"]})
        run.write_results(document, args.name)
    print("\n" + sizes_table(document) + "\n\n" + ratios_table(document))
    png = plot_sizes(document, run.RESULTS_DIR / f"{args.name}.png")
    print(f"\nresults: {run.RESULTS_DIR / (args.name + '.json')}\nplot:    {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
