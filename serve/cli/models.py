"""`serve pull | models | rm | quantize`: model management commands.

serve/cli/main.py registers them with `add_model_commands(subparsers)`; each handler takes the parsed Namespace,
returns an exit code and raises ServeError for anything the user can fix (the CLI prints `error: <message>`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from serve.models.catalog import CAPABILITIES, Catalog, ModelSpec, load_catalog, resolve_model
from serve.errors import ConfigError

QUANTIZE_CHOICES = ("q4_k_m", "q5_k_m", "q6_k", "q8_0")


def _catalog(args: argparse.Namespace) -> Catalog:
    from serve.config import USER_CATALOG_FILE

    user_file = getattr(args, "catalog_file", None)
    if user_file is not None:
        user_file = Path(user_file).expanduser()
        if not user_file.exists():
            raise ConfigError(f"catalog file not found: {user_file}")
    elif USER_CATALOG_FILE.exists():
        user_file = USER_CATALOG_FILE
    return load_catalog(user_file)


def cmd_pull(args: argparse.Namespace) -> int:
    """Download a model (alias, hf:// spec) into the HF cache, resuming and verifying; print its path."""
    from serve.models.hub import describe_size, pull

    spec = resolve_model(args.spec, _catalog(args))
    backend = getattr(args, "backend", None) or "llamacpp"
    path = pull(spec, backend, progress=not getattr(args, "quiet", False))
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    print(f"{spec.name}: {path} ({describe_size([f for f in files if f.is_file()])})")
    return 0


def _describe(spec: ModelSpec) -> dict:
    """What `serve models` adds to the cache's view of an entry: what the model can do (capabilities in the
    vocabulary's order) and the quantization of its GGUF."""
    return {"capabilities": [name for name in CAPABILITIES if name in spec.capabilities],
            "tool_format": spec.tool_format, "reasoning_format": spec.reasoning_format, "pooling": spec.pooling,
            "quant": _gguf_quant(spec)}


def _gguf_quant(spec: ModelSpec) -> str:
    from serve.models.select import quant_tag

    source = spec.gguf
    if source is None:
        return "-"
    # an embedded file is what is served, whatever quant its Hub fallback names
    named = str(source.local_path) if source.local_path else source.file
    return (quant_tag(named) if named else None) or (source.quant or "-").upper()


def _params(count: int) -> str:
    return f"{count / 1e9:.1f}B" if count >= 999_500_000 else f"{count / 1e6:.0f}M"


def _context(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens >= 1024 and tokens % 1024 == 0 else str(tokens)


def _format_rows(rows: list[dict]) -> str:
    """One line per model, within 100 columns; the full sources are in --json."""
    from serve.models.cache import human_bytes

    header = ("NAME", "PARAMS", "DOWNLOAD", "HAVE", "QUANT", "CONTEXT", "CAPABILITIES")
    table = [header]
    for row in rows:
        have = human_bytes(row["size_bytes"]) if row["downloaded"] else "-"
        table.append((row["name"], _params(row["num_params"]), human_bytes(row["download_bytes"]), have, row["quant"],
                      _context(row["context_length"]), ",".join(row["capabilities"])))
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    for row in rows:
        lines += [f"  {row['name']}: {p}" for p in row["paths"]] if row["downloaded"] else []
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    """List the catalog, what each model can do, and what is downloaded (size, paths); `--json` for one JSON
    array."""
    from serve.models.hub import list_models

    catalog = _catalog(args)
    rows = [{**row, **_describe(catalog.get(row["name"]))} for row in list_models(catalog)]
    print(json.dumps(rows, indent=2) if getattr(args, "json", False) else _format_rows(rows))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """Remove a model's downloaded files from the HF cache."""
    from serve.models.hub import remove

    spec = resolve_model(args.spec, _catalog(args))
    removed = remove(spec)
    if not removed:
        print(f"{spec.name}: nothing downloaded to remove")
        return 0
    for path in removed:
        print(f"removed {path}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize a local F16/BF16/F32 GGUF file with llama.cpp's quantizer."""
    from serve.models.cache import human_bytes
    from serve.models.quantize import quantize_file

    out = quantize_file(Path(args.src), args.type, args.output, allow_requantize=args.allow_requantize,
                        progress=not getattr(args, "quiet", False))
    print(f"{out} ({human_bytes(out.stat().st_size)})")
    return 0


def _catalog_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand default must not overwrite a --catalog given before the subcommand
    parser.add_argument("--catalog", dest="catalog_file", type=Path, default=argparse.SUPPRESS,
                        help="extra catalog file (default ~/.config/quantserve/models.toml)")


def add_model_commands(subparsers) -> None:
    """Register pull, models, rm and quantize on an argparse subparsers object (with func= defaults)."""
    pull = subparsers.add_parser("pull", help="download a model into the Hugging Face cache")
    pull.add_argument("spec", help="catalog alias, hf://org/repo:QUANT, hf://org/repo/file.gguf")
    pull.add_argument("--backend", choices=("llamacpp", "vllm"), default=argparse.SUPPRESS,
                      help="which source to pull (default llamacpp: the GGUF file)")
    pull.add_argument("--quiet", action="store_true", help="no progress bar")
    _catalog_option(pull)
    pull.set_defaults(func=cmd_pull)

    models = subparsers.add_parser("models", help="list the catalog, what each model can do, what is downloaded")
    models.add_argument("--json", action="store_true", help="print one JSON array")
    _catalog_option(models)
    models.set_defaults(func=cmd_models)

    rm = subparsers.add_parser("rm", help="remove a downloaded model")
    rm.add_argument("spec", help="catalog alias or hf:// spec")
    _catalog_option(rm)
    rm.set_defaults(func=cmd_rm)

    quantize = subparsers.add_parser("quantize", help="quantize an F16/BF16 GGUF file with llama.cpp")
    quantize.add_argument("src", metavar="SRC", help="the GGUF file to quantize")
    quantize.add_argument("--type", required=True, type=str.lower, choices=QUANTIZE_CHOICES)
    quantize.add_argument("-o", "--output", type=Path, default=None, help="output file (default: beside SRC)")
    quantize.add_argument("--allow-requantize", action="store_true",
                          help="quantize an already-quantized file (loses quality)")
    quantize.add_argument("--quiet", action="store_true", help="no progress bar")
    quantize.set_defaults(func=cmd_quantize)
