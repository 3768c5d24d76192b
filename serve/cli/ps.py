"""`serve ps`: ask a running server which models it has loaded (its GET /api/ps)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from serve.errors import ConfigError

NEVER_SECONDS = 100 * 365 * 86400


def fetch_running_models(host: str, port: int, api_key: str | None = None) -> dict:
    request = urllib.request.Request(f"http://{host}:{port}/api/ps")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"the server at {host}:{port} answered {exc.code} to /api/ps"
                          + (" (wrong or missing --api-key?)" if exc.code == 401 else "")) from None
    except (urllib.error.URLError, OSError):
        raise ConfigError(f"no quantserve server answers at {host}:{port}; start one with `serve up` "
                          f"or pass --host/--port") from None


def _expiry(model: dict) -> str:
    expires = model.get("expires_at")
    if not expires:
        return "never"
    try:
        from datetime import datetime

        seconds = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp() - time.time()
    except ValueError:
        return expires
    if seconds > NEVER_SECONDS:  # Ollama writes "never" as a date centuries away
        return "never"
    return f"in {max(seconds, 0):.0f}s"


def format_running_models(answer: dict) -> str:
    models = answer.get("models", [])
    if not models:
        return "no models loaded"
    rows = [("NAME", "BACKEND", "SIZE", "PARALLEL", "CONTEXT", "IDLE", "UNLOADS")]
    for model in models:
        extra = model.get("quantserve", {})
        rows.append((model.get("name", "?"), str(extra.get("backend", "-")),
                     f"{model.get('size', 0) / 2**30:.2f} GiB", str(extra.get("num_parallel", "-")),
                     str(model.get("context_length", extra.get("context_length", "-"))),
                     f"{extra.get('idle_seconds', 0):.0f}s", _expiry(model)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
