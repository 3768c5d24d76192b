"""The `serve` command line: arguments -> configuration -> the module that does the work."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from serve.errors import ServeError

SPECULATIVE_CHOICES = ("ngram", "draft", "off")
SPECULATIVE_HELP = ("llama.cpp: speculative decoding; ngram (the default) drafts from the request's own prompt and "
                    "output where that pays at the load, draft from a draft model (given one, drafting is the "
                    "default where a draft decode's measured cost pays; --speculative draft drafts whatever it "
                    "costs), off disables it; each token is sampled as without drafts")
DRAFT_MODEL_HELP = ("llama.cpp: a smaller or more quantized sibling of the model (same tokenizer) that drafts "
                    "tokens for it to verify: catalog alias, hf://org/repo:QUANT, or a local path")
DRAFT_MAX_HELP = "llama.cpp: tokens a request drafts with the draft model in one step at most (default 8)"
KV_TYPE_HELP = ("KV cache type: f16 (default), q8_0 or q4_0 on llama.cpp (about half / a quarter of the "
                "memory, so more parallel sequences); f16 or fp8 on vLLM")


def _add_up(subparsers) -> None:
    up = subparsers.add_parser("up", help="serve models over an OpenAI- and Ollama-compatible HTTP API")
    up.add_argument("--model", "-m", action="append", dest="models", default=[],
                    help="catalog alias, hf://org/repo:QUANT, or a local path (repeatable); default: the embedded SmolLM2-135M")
    up.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, help="port to listen on (default 8000)")
    up.add_argument("--ctx", type=int, dest="context_length", help="context per request, in tokens")
    up.add_argument("--threads", type=int, dest="num_threads", help="CPU threads (default: physical cores)")
    up.add_argument("--parallel", type=int, dest="num_parallel", help="sequences decoded together")
    up.add_argument("--max-queue", type=int, dest="max_queue", help="waiting requests before HTTP 429 (default 64)")
    up.add_argument("--batch-tokens", type=int, dest="max_batch_tokens", help="token budget of one step")
    up.add_argument("--kv-type", dest="kv_type", help=KV_TYPE_HELP)
    up.add_argument("--speculative", choices=SPECULATIVE_CHOICES, dest="speculative", help=SPECULATIVE_HELP)
    up.add_argument("--draft-model", dest="draft_model", help=DRAFT_MODEL_HELP)
    up.add_argument("--draft-max", type=int, dest="draft_max_tokens", help=DRAFT_MAX_HELP)
    up.add_argument("--api-key", dest="api_key", help="require this bearer token on every API request")
    up.add_argument("--backend", choices=None, help="llamacpp or vllm (default: chosen by the hardware probe)")
    up.add_argument("--pooling", choices=("mean", "cls", "last", "rank"),
                    help="every model pools so for /v1/embeddings (rank: /v1/rerank), overriding its catalog "
                         "entry and GGUF; a chat model then embeds too (as llama-server's --pooling)")
    up.add_argument("--catalog", type=Path, dest="catalog_file", help="a user models.toml extending the catalog")
    up.add_argument("--tensor-parallel", type=int, dest="tensor_parallel_size", help="vLLM: GPUs per model")
    up.add_argument("--pipeline-parallel", type=int, dest="pipeline_parallel_size", help="vLLM: pipeline stages")
    up.add_argument("--ray-address", dest="ray_address", help="vLLM: run on this Ray cluster (multi-node)")
    up.add_argument("--gpu-memory-utilization", type=float, dest="gpu_memory_utilization",
                    help="vLLM: share of GPU memory (of RAM on a CPU) it may take")
    up.add_argument("--max-memory", dest="max_memory",
                    help="memory all loaded models may take, e.g. 12GiB (default: free RAM/VRAM minus 2 GiB)")
    up.add_argument("--max-models", type=int, dest="max_models", help="at most this many models loaded at once")
    up.add_argument("--keep-alive", dest="keep_alive",
                    help="unload a model idle this long, e.g. 5m (default), 0 (at once), -1 (never)")
    up.add_argument("--pin", action="append", dest="pinned", default=[], help="never unload this model (repeatable)")
    up.add_argument("--switch-window", dest="switch_window",
                    help="a busy model stays at least this long before another takes its place (default 2s)")
    up.add_argument("--models-dir", type=Path, dest="models_dir",
                    help="requests may load model files under this directory (other paths: only with --model)")
    up.add_argument("--allow-pull", action="store_const", const=True, dest="allow_pull",
                    help="requests may download models (hf:// specs not yet cached, Ollama's /api/pull)")
    up.add_argument("--max-stored-responses", type=int, dest="max_stored_responses",
                    help="Responses API: keep this many finished responses for previous_response_id (default 1024)")
    up.add_argument("--metrics-key", dest="metrics_key",
                    help="GET /metrics wants this bearer token (default: the API key, if any)")
    up.add_argument("--drain-timeout", dest="drain_timeout",
                    help="on SIGTERM/SIGINT, running requests get this long to finish, e.g. 30s (default), 0")
    up.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    up.set_defaults(func=_cmd_up)


def _cmd_up(args: argparse.Namespace) -> int:
    from serve import server
    from serve.config import resolve_config

    names = ("models", "host", "port", "context_length", "num_threads", "num_parallel", "max_queue",
             "max_batch_tokens", "kv_type", "api_key", "backend", "catalog_file", "pooling", "tensor_parallel_size",
             "pipeline_parallel_size", "ray_address", "gpu_memory_utilization", "log_level", "max_memory",
             "max_models", "keep_alive", "pinned", "switch_window", "models_dir", "allow_pull", "max_stored_responses",
             "metrics_key", "drain_timeout", "speculative", "draft_model", "draft_max_tokens")
    config = resolve_config({name: getattr(args, name) for name in names})
    logging.getLogger().setLevel(config.log_level.upper())
    server.run(config)
    return 0


def _add_probe(subparsers) -> None:
    probe = subparsers.add_parser("probe", help="show the hardware and the plan for a model")
    probe.add_argument("--model", "-m", help="model to plan for (default: the embedded SmolLM2-135M)")
    probe.add_argument("--backend", help="force llamacpp or vllm")
    probe.add_argument("--kv-type", dest="kv_type", help=KV_TYPE_HELP)
    probe.add_argument("--speculative", choices=SPECULATIVE_CHOICES, dest="speculative", help=SPECULATIVE_HELP)
    probe.add_argument("--draft-model", dest="draft_model", help=DRAFT_MODEL_HELP)
    probe.add_argument("--draft-max", type=int, dest="draft_max_tokens", help=DRAFT_MAX_HELP)
    probe.add_argument("--catalog", type=Path, dest="catalog_file")
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    probe.set_defaults(func=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    from serve.config import USER_CATALOG_FILE, PlanChoices
    from serve.models.catalog import load_catalog, resolve_model
    from serve.placement.hardware import probe
    from serve.placement.plan import make_plan
    from serve.placement.report import format_report, hardware_report

    hw = probe()
    try:
        catalog = load_catalog(args.catalog_file or USER_CATALOG_FILE)
        spec = resolve_model(args.model, catalog)
        choices = PlanChoices(backend=args.backend, kv_type=args.kv_type.lower() if args.kv_type else None,
                              speculative=args.speculative, draft_model=args.draft_model,
                              draft_max_tokens=args.draft_max_tokens)
        report = hardware_report(hw, make_plan(hw, spec, choices, lambda draft: resolve_model(draft, catalog)))
    except ServeError as exc:  # still show the hardware, with why there is no plan
        report = hardware_report(hw, None, error=exc.message)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _add_ps(subparsers) -> None:
    ps = subparsers.add_parser("ps", help="list the models a running server has loaded")
    ps.add_argument("--host", default="127.0.0.1")
    ps.add_argument("--port", type=int, default=8000)
    ps.add_argument("--api-key", dest="api_key")
    ps.add_argument("--json", action="store_true", help="print the server's JSON answer")
    ps.set_defaults(func=_cmd_ps)


def _cmd_ps(args: argparse.Namespace) -> int:
    from serve.cli.ps import fetch_running_models, format_running_models

    answer = fetch_running_models(args.host, args.port, args.api_key)
    print(json.dumps(answer, indent=2) if args.json else format_running_models(answer))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve", description="quantserve: local inference for quantized open models")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_up(subparsers)
    _add_probe(subparsers)
    _add_ps(subparsers)
    from serve.cli.models import add_model_commands

    add_model_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ServeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "pull":
            print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130

