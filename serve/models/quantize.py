"""GGUF quantization through llama.cpp's own quantizer (`llama_model_quantize` in llama-cpp-python).

llama.cpp offers no progress callback for quantization, but it writes the output tensor by tensor, so the
progress bar follows the output file's size against an estimate from the tensor shapes.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from serve.errors import ConfigError, ModelLoadError
from serve.models.gguf import read_gguf_info
from serve.models.cache import check_disk_space, free_bytes, human_bytes

log = logging.getLogger(__name__)

# type -> (llama_ftype constant name, approximate bits per weight of the 2-D tensors, for the estimate)
QUANT_TYPES = {
    "q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", 4.9),
    "q5_k_m": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", 5.7),
    "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", 6.6),
    "q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", 8.5),
}


def _normalize_type(quant_type: str) -> str:
    key = quant_type.lower()
    if key not in QUANT_TYPES:
        raise ConfigError(f"unknown quantization type {quant_type!r}: choose one of {', '.join(QUANT_TYPES)}")
    return key


def default_output(src: Path, quant_type: str) -> Path:
    """`model-F16.gguf` -> `model-Q4_K_M.gguf` beside the source (the precision tag is replaced)."""
    stem = src.name[:-5] if src.name.lower().endswith(".gguf") else src.name
    for tag in ("-f16", ".f16", "-bf16", ".bf16", "-f32", ".f32", "_f16", "_bf16"):
        if stem.lower().endswith(tag):
            stem = stem[: -len(tag)]
            break
    return src.with_name(f"{stem}-{quant_type.upper()}.gguf")


def _estimated_size(info, quant_type: str) -> int:
    bits = QUANT_TYPES[quant_type][1]
    return int(info.num_elements(two_dim=True) * bits / 8 + info.num_elements(two_dim=False) * 4)


_LOG_TAIL: deque[str] = deque(maxlen=20)  # llama.cpp's last lines, to explain a failure


def _llama_log_sink(level: int, text: bytes, user_data) -> None:
    # llama.cpp reports even per-tensor fallbacks at error level: keep the tail, show it only on failure
    line = text.decode("utf-8", errors="replace").strip()
    if line:
        _LOG_TAIL.append(line)


_SINK = None  # the ctypes callback must outlive every call that may use it


@contextmanager
def _quiet_llama():
    """Route llama.cpp's log through `_llama_log_sink` while quantizing, then restore the previous sink."""
    import llama_cpp

    global _SINK
    if _SINK is None:
        _SINK = llama_cpp.llama_log_callback(_llama_log_sink)
    previous, user_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(user_data))
    llama_cpp.llama_log_set(_SINK, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(previous, user_data)


def _run_quantizer(src: Path, tmp: Path, quant_type: str, allow_requantize: bool) -> int:
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError("llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant_type][0])
    params.nthread = os.cpu_count() or 1
    params.allow_requantize = allow_requantize
    return llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))


def _with_progress(run, tmp: Path, estimate: int, label: str, progress: bool) -> int:
    """Run `run()` in a thread, showing the output file's growth; returns its result."""
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(rc=run()), daemon=True)
    if not progress:
        worker.start()
        worker.join()
        return result.get("rc", -1)
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                               TransferSpeedColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=estimate)
        worker.start()
        while worker.is_alive():
            size = tmp.stat().st_size if tmp.exists() else 0
            bar.update(task, completed=min(size, int(estimate * 0.99)))
            time.sleep(0.2)
        worker.join()
        final = tmp.stat().st_size if tmp.exists() else 0
        bar.update(task, total=max(final, 1), completed=final)
    return result.get("rc", -1)


def _raise_quantize_error(src: Path, quant_type: str, rc: int, tmp: Path, estimate: int) -> None:
    written = tmp.stat().st_size if tmp.exists() else 0
    free = free_bytes(tmp.parent)
    if free < estimate - written:  # llama.cpp only says "iostream error" when a write fails
        raise ModelLoadError(f"the disk filled up while writing {tmp.parent / tmp.stem} ({human_bytes(written)} of "
                             f"about {human_bytes(estimate)} written, {human_bytes(free)} free); nothing was left "
                             "behind: free some space and run it again")
    detail = f": {_LOG_TAIL[-1]}" if _LOG_TAIL else ""
    raise ModelLoadError(f"llama.cpp could not quantize {src} to {quant_type.upper()} (code {rc}){detail}")


def quantize_file(src: Path, quant_type: str, out: Path | None = None, *, allow_requantize: bool = False,
                  progress: bool = True) -> Path:
    """Quantize the GGUF file `src` (F32/F16/BF16; the first shard of a split model) to `quant_type`.

    Refuses an already-quantized input unless `allow_requantize` (quality drops each time). The result is
    written to a temporary name and renamed, so an interrupted run never leaves a half file at `out`.
    """
    src = Path(src)
    quant_type = _normalize_type(quant_type)
    info = read_gguf_info(src)
    already = info.quantized_types()
    if already and not allow_requantize:
        raise ConfigError(f"{src} is already quantized ({', '.join(already)}); quantizing again loses quality, "
                          "pass --allow-requantize to do it anyway")
    out = Path(out) if out is not None else default_output(src, quant_type)
    if out.resolve() == src.resolve():
        raise ConfigError(f"output {out} would overwrite the input; choose another -o")
    out.parent.mkdir(parents=True, exist_ok=True)
    estimate = _estimated_size(info, quant_type)
    check_disk_space(estimate, out.parent)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    label = f"{src.name} -> {quant_type.upper()}"
    _LOG_TAIL.clear()
    start = time.monotonic()
    try:
        with _quiet_llama():
            rc = _with_progress(lambda: _run_quantizer(src, tmp, quant_type, allow_requantize), tmp, estimate,
                                label, progress)
        if rc != 0 or not tmp.exists():
            _raise_quantize_error(src, quant_type, rc, tmp, estimate)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("quantized %s -> %s (%s) in %.1f s", src, out, human_bytes(out.stat().st_size),
             time.monotonic() - start)
    return out
