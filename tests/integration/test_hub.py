"""Pulls from a local Hub-compatible server (tests/hubserver.py) serving real GGUF files.

Every pull runs `python -m serve.cli` in a subprocess with HF_ENDPOINT and HF_HOME pointing at this
test's server and a fresh cache: huggingface_hub reads them at import time, as a user's shell would set them.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from serve.models.catalog import embedded_model_path
from serve.models.gguf import read_gguf_info
from serve.models.cache import file_digest
from tests.fixtures_gguf import f16_gguf, split_gguf
from tests.hubserver import HubFile, HubRepo, HubServer

ROOT = Path(__file__).resolve().parents[2]
REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
Q4_NAME = "SmolLM2-135M-Instruct-Q4_1.gguf"
F16_NAME = "SmolLM2-135M-Instruct-F16.gguf"
GOOD_TOKEN = "hf_test_good"
MB = 1_000_000


def _safetensors() -> bytes:
    """A real (tiny) safetensors file: header length, JSON header, one float32 tensor."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + b"\x00\x00\x80?\x00\x00\x00@"


@pytest.fixture(scope="module")
def hub():
    q4, f16, shards = embedded_model_path(), f16_gguf(), split_gguf()
    readme = HubFile("README.md", b"# SmolLM2-135M-Instruct, test copy\n", lfs=False)
    repos = [
        HubRepo(REPO, {
            Q4_NAME: HubFile(Q4_NAME, q4), F16_NAME: HubFile(F16_NAME, f16), "README.md": readme,
            **{f"split/{s.name}": HubFile(f"split/{s.name}", s) for s in shards}}),
        HubRepo("test-org/split-GGUF", {s.name: HubFile(s.name, s) for s in shards}),
        HubRepo("test-org/only-f16-GGUF", {F16_NAME: HubFile(F16_NAME, f16)}),
        HubRepo("test-org/gated-GGUF", {Q4_NAME: HubFile(Q4_NAME, q4)}, gated=True, tokens=(GOOD_TOKEN,)),
        HubRepo("test-org/private-GGUF", {Q4_NAME: HubFile(Q4_NAME, q4)}, private=True, tokens=(GOOD_TOKEN,)),
        HubRepo("test-org/huge-GGUF", {"huge-Q4_K_M.gguf": HubFile("huge-Q4_K_M.gguf", b"x", fake_size=10**15)}),
        HubRepo("test-org/tiny-vllm", {
            "config.json": HubFile("config.json", b'{"model_type": "llama"}', lfs=False),
            "tokenizer.json": HubFile("tokenizer.json", b'{"version": "1.0"}', lfs=False),
            "model.safetensors": HubFile("model.safetensors", _safetensors()),
            "pytorch_model.bin": HubFile("pytorch_model.bin", b"not needed by vLLM"),
            "original/consolidated.pth": HubFile("original/consolidated.pth", b"not needed either")}),
    ]
    with HubServer(repos) as server:
        yield server


@pytest.fixture()
def home(tmp_path, hub):
    hub.reset()
    return tmp_path


def run_cli(home: Path, endpoint: str, *args: str, env: dict | None = None, wait: bool = True):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    environ.update({"HF_ENDPOINT": endpoint, "HF_HOME": str(home / "hf"), "HOME": str(home),
                    "TQDM_POSITION": "-1", "PYTHONPATH": str(ROOT)})
    environ.update(env or {})
    command = [sys.executable, "-m", "serve.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300)


def pulled_path(result) -> Path:
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1].split(": ", 1)[1].rsplit(" (", 1)[0])


def one_line_error(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def blobs(home: Path, repo: str) -> list[Path]:
    folder = home / "hf" / "hub" / ("models--" + repo.replace("/", "--")) / "blobs"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_pull_by_quant_tag_lands_verified_in_the_standard_hf_cache(home, hub):
    result = run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:q4_1")
    path = pulled_path(result)
    sha = file_digest(embedded_model_path(), "sha256")
    assert path.name == Q4_NAME and path.parent.parent.name == "snapshots"
    assert path.is_symlink() and path.resolve().name == sha and file_digest(path, "sha256") == sha
    assert "98.4M/98.4M" in result.stderr and "B/s" in result.stderr  # the progress bar: size and speed
    # other tools find it through huggingface_hub's own cache lookup
    lookup = subprocess.run([sys.executable, "-c", f"from huggingface_hub import try_to_load_from_cache as t; "
                             f"print(t('{REPO}', '{Q4_NAME}'))"], env={**os.environ, "HF_HOME": str(home / "hf")},
                            capture_output=True, text=True, check=True)
    assert Path(lookup.stdout.strip()) == path
    assert len(hub.cdn_gets(sha)) == 1
    again = run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1")
    assert pulled_path(again) == path and len(hub.cdn_gets(sha)) == 1  # nothing downloaded twice


def test_pull_resumes_after_the_connection_is_cut_mid_file(home, hub):
    sha = file_digest(embedded_model_path(), "sha256")
    hub.faults.cut_every[sha] = 40 * MB
    path = pulled_path(run_cli(home, hub.endpoint, "pull", f"hf://{REPO}/{Q4_NAME}"))
    assert file_digest(path, "sha256") == sha
    ranges = [r["range"] for r in hub.cdn_gets(sha)]
    # the client keeps what it had written when the connection dropped and asks for the rest
    starts = [int(r[len("bytes="):-1]) for r in ranges[1:]]
    assert ranges[0] is None and len(starts) >= 2 and starts == sorted(starts) and starts[0] > 0
    assert all(r.endswith("-") for r in ranges[1:])
    size = embedded_model_path().stat().st_size
    assert size <= hub.bytes_sent[sha] < 1.5 * size  # resumed, never restarted from zero


def test_pull_resumes_the_partial_file_of_an_interrupted_run(home, hub):
    sha = file_digest(embedded_model_path(), "sha256")
    hub.faults.stall_after[sha] = 50 * MB
    first = run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1", wait=False)
    hub.wait_for_bytes(sha, 50 * MB)
    partial = home / "hf" / "hub" / ("models--" + REPO.replace("/", "--")) / "blobs" / f"{sha}.incomplete"
    deadline = time.monotonic() + 60
    while (not partial.exists() or partial.stat().st_size < 40 * MB) and time.monotonic() < deadline:
        time.sleep(0.05)  # the client is still writing what it received
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr
    kept = partial.stat().st_size
    assert 40 * MB <= kept <= 50 * MB
    hub.faults.stall_after.clear()
    hub.faults.release.set()
    path = pulled_path(run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1"))
    assert file_digest(path, "sha256") == sha and not partial.exists()
    assert hub.cdn_gets(sha)[-1]["range"] == f"bytes={kept}-"


def test_a_corrupted_byte_fails_verification_and_the_file_is_removed(home, hub):
    sha = file_digest(embedded_model_path(), "sha256")
    hub.faults.corrupt[sha] = 12_345_678
    line = one_line_error(run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1"))
    assert "sha256 mismatch" in line and "deleted" in line and Q4_NAME in line
    assert blobs(home, REPO) == []  # neither the blob nor the partial file is left behind
    assert not list((home / "hf" / "hub").rglob(Q4_NAME))


@pytest.mark.parametrize("spec, env, expected", [
    ("hf://test-org/missing-GGUF:Q4_0", {"HF_TOKEN": "hf_someone"},
     "repository test-org/missing-GGUF not found on {endpoint} (HTTP 404)"),
    ("hf://test-org/private-GGUF:Q4_1", {},
     "test-org/private-GGUF was not found or is private (HTTP 401): check the name; if it is gated or private, "
     "accept the license at {endpoint}/test-org/private-GGUF and set HF_TOKEN"),
    ("hf://test-org/gated-GGUF:Q4_1", {},
     "test-org/gated-GGUF is gated (HTTP 401): accept the license at {endpoint}/test-org/gated-GGUF and set HF_TOKEN"),
    ("hf://test-org/gated-GGUF:Q4_1", {"HF_TOKEN": "hf_not_accepted"},
     "test-org/gated-GGUF is gated (HTTP 403): accept the license at {endpoint}/test-org/gated-GGUF and set HF_TOKEN"),
    (f"hf://{REPO}:Q5_K_M", {}, f"{REPO} has no GGUF file for quant Q5_K_M; available quants: F16, Q4_1"),
    (f"hf://{REPO}/nope.gguf", {}, f"{REPO} has no file nope.gguf"),
    ("smolm2-135m", {}, "unknown model 'smolm2-135m'; did you mean smollm2-135m"),
])
def test_hub_errors_are_one_clear_line(home, hub, spec, env, expected):
    line = one_line_error(run_cli(home, hub.endpoint, "pull", spec, env=env))
    assert line.startswith("error: " + expected.format(endpoint=hub.endpoint))


def test_http_500_is_reported_and_transient_500s_are_retried(home, hub):
    hub.faults.status["resolve"] = [500, 1]
    line = one_line_error(run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1"))
    assert line == f"error: the Hub answered HTTP 500 for {REPO}; try again later"
    hub.faults.status["tree"] = [500, 2]  # huggingface_hub backs off and retries the listing
    assert pulled_path(run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1")).exists()


def test_gated_repo_pulls_with_hf_token_and_the_token_stays_on_the_hub(home, hub):
    path = pulled_path(run_cli(home, hub.endpoint, "pull", "hf://test-org/gated-GGUF:Q4_1",
                               env={"HF_TOKEN": GOOD_TOKEN}))
    assert path.exists()
    resolves = [r for r in hub.requests if "/resolve/" in r["path"]]
    assert resolves and all(r["auth"] == f"Bearer {GOOD_TOKEN}" for r in resolves)
    assert all(r["auth"] is None for r in hub.requests if r["server"] == "cdn")


def test_split_gguf_is_pulled_whole_and_loads(home, hub):
    single = pulled_path(run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1"))
    assert single.name == Q4_NAME  # a single file is preferred over the split copy in the same repo
    first = pulled_path(run_cli(home, hub.endpoint, "pull", "hf://test-org/split-GGUF:q4_1"))
    shards = split_gguf()
    assert first.name == shards[0].name
    assert sorted(p.name for p in first.parent.iterdir()) == [s.name for s in shards]
    for local, pulled in zip(shards, [first.parent / s.name for s in shards]):
        assert file_digest(pulled, "sha256") == file_digest(local, "sha256")
    llama_cpp = pytest.importorskip("llama_cpp")
    model = llama_cpp.Llama(str(first), n_ctx=128, n_threads=1, verbose=False)
    out = model.create_completion("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", max_tokens=4,
                                  temperature=0)
    assert out["usage"]["completion_tokens"] >= 1


def test_disk_check_refuses_before_downloading(home, hub):
    line = one_line_error(run_cli(home, hub.endpoint, "pull", "hf://test-org/huge-GGUF:Q4_K_M"))
    assert line.startswith(f"error: not enough disk space in {home / 'hf' / 'hub'}: need 1.0 PB, ")
    assert line.endswith(" free")
    assert not [r for r in hub.requests if r["server"] == "cdn"]


def test_offline_mode_uses_the_cache_and_says_what_is_there(home, hub):
    path = pulled_path(run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1"))
    hub.reset()
    offline = {"HF_HUB_OFFLINE": "1"}
    assert pulled_path(run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1", env=offline)) == path
    assert hub.requests == []
    line = one_line_error(run_cli(home, hub.endpoint, "pull", "hf://test-org/split-GGUF:Q4_1", env=offline))
    assert "hf://test-org/split-GGUF is not in the cache" in line and "HF_HUB_OFFLINE=1" in line
    assert f"cached: {REPO}" in line


def test_no_network_falls_back_to_the_cache_or_explains(home, hub):
    path = pulled_path(run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1"))
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert pulled_path(run_cli(home, dead, "pull", f"hf://{REPO}:Q4_1")) == path
    line = one_line_error(run_cli(home, dead, "pull", "hf://test-org/split-GGUF:Q4_1"))
    assert line.startswith(f"error: cannot reach {dead} (")
    assert f"cached: {REPO}; to run offline on cached models set HF_HUB_OFFLINE=1" in line


def _user_catalog(home: Path) -> Path:
    catalog = home / "models.toml"
    catalog.write_text(textwrap.dedent(f"""
        [models.test-smol]
        gguf = {{ repo = "{REPO}", quant = "Q4_1" }}
        vllm = {{ repo = "test-org/tiny-vllm" }}
        context_length = 8192
        num_params = 134_515_008
        license = "apache-2.0"
        download_bytes = 98_362_432

        [models.test-f16]
        gguf = {{ repo = "test-org/only-f16-GGUF", quant = "F16" }}
        context_length = 8192
        num_params = 134_515_008
        license = "apache-2.0"
        download_bytes = 270_885_952
    """))
    return catalog


def test_models_lists_downloads_and_rm_removes_them(home, hub):
    catalog = str(_user_catalog(home))
    before = json.loads(run_cli(home, hub.endpoint, "models", "--json", "--catalog", catalog).stdout)
    rows = {row["name"]: row for row in before}
    assert {"test-smol", "mistral-7b-q4", "smollm2-135m"} <= set(rows)
    assert not rows["test-smol"]["downloaded"] and rows["smollm2-135m"]["downloaded"]  # the embedded file
    path = pulled_path(run_cli(home, hub.endpoint, "pull", "test-smol", "--catalog", catalog))
    after = {r["name"]: r for r in json.loads(run_cli(home, hub.endpoint, "models", "--json", "--catalog",
                                                         catalog).stdout)}
    assert after["test-smol"]["downloaded"] and after["test-smol"]["paths"] == [str(path)]
    assert after["test-smol"]["size_bytes"] == embedded_model_path().stat().st_size
    table = run_cli(home, hub.endpoint, "models", "--catalog", catalog).stdout
    assert "test-smol" in table and "98.4 MB" in table and str(path) in table
    removed = run_cli(home, hub.endpoint, "rm", "test-smol", "--catalog", catalog)
    assert removed.returncode == 0 and f"removed {path}" in removed.stdout
    assert not path.exists() and blobs(home, REPO) == []
    final = {r["name"]: r for r in json.loads(run_cli(home, hub.endpoint, "models", "--json", "--catalog",
                                                         catalog).stdout)}
    assert not final["test-smol"]["downloaded"]


def test_vllm_source_pulls_a_checkpoint_directory(home, hub):
    catalog = str(_user_catalog(home))
    snapshot = pulled_path(run_cli(home, hub.endpoint, "pull", "test-smol", "--backend", "vllm",
                                   "--catalog", catalog))
    assert snapshot.is_dir() and snapshot.parent.name == "snapshots"
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()) == [
        "config.json", "model.safetensors", "tokenizer.json"]
    assert json.loads((snapshot / "config.json").read_text()) == {"model_type": "llama"}
    rows = {r["name"]: r for r in json.loads(run_cli(home, hub.endpoint, "models", "--json", "--catalog",
                                                        catalog).stdout)}
    assert rows["test-smol"]["paths"] == [str(snapshot)]


def test_f16_only_alias_is_quantized_once_and_cached_beside_the_hub_cache(home, hub):
    pytest.importorskip("llama_cpp")
    catalog = str(_user_catalog(home))
    first = run_cli(home, hub.endpoint, "pull", "test-f16", "--catalog", catalog)
    quantized = pulled_path(first)
    assert quantized.is_relative_to(home / "hf" / "quantserve" / "quantized")
    assert quantized.name == "SmolLM2-135M-Instruct-F16-Q4_K_M.gguf"
    assert "Q4_K" in read_gguf_info(quantized).quantized_types()
    stamp = quantized.stat().st_mtime_ns
    hub.reset()
    second = run_cli(home, hub.endpoint, "pull", "test-f16", "--catalog", catalog)
    assert pulled_path(second) == quantized and quantized.stat().st_mtime_ns == stamp
    assert not [r for r in hub.requests if r["server"] == "cdn"]
    removed = run_cli(home, hub.endpoint, "rm", "test-f16", "--catalog", catalog)
    assert f"removed {quantized}" in removed.stdout and not quantized.exists()
    assert blobs(home, "test-org/only-f16-GGUF") == []
