"""What a request may load, against the real server, the real clients and a local Hub (tests/hubserver.py).

Two servers: a guarded one (the defaults plus --models-dir, and a Hugging Face cache that already holds one
Hub model) and one started with --allow-pull over an empty cache. Paths anywhere else, links out of the
models directory and Hub repositories not in the cache get one 404 that is the same bytes whatever the
name points at (an existing GGUF, a secret, nothing), in each dialect's error shape.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from serve.models.cache import file_digest
from serve.models.catalog import embedded_model_path
from tests.hubserver import HubFile, HubRepo, HubServer
from tests.integration.conftest import start_llamacpp_server
from tests.integration.server import REPO_ROOT

REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
Q4_NAME = "SmolLM2-135M-Instruct-Q4_1.gguf"
HUB_SPEC = f"hf://{REPO}:Q4_1"
HUGE_SPEC = "hf://test-org/huge-GGUF:Q4_K_M"
SMALL = ["--ctx", "512", "--parallel", "1"]
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def hub():
    huge = HubFile("huge-Q4_K_M.gguf", b"x", fake_size=10**15)
    with HubServer([HubRepo(REPO, {Q4_NAME: HubFile(Q4_NAME, embedded_model_path())}),
                    HubRepo("test-org/huge-GGUF", {huge.path: huge})]) as server:
        yield server


def link_gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(embedded_model_path(), path)
    except OSError:
        import shutil

        shutil.copyfile(embedded_model_path(), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """root/models (the --models-dir: a GGUF, and a link to a GGUF outside) and root/outside/secret.gguf."""
    root = tmp_path_factory.mktemp("access")
    link_gguf(root / "models" / "smol-copy.gguf")
    secret = link_gguf(root / "outside" / "secret.gguf")
    (root / "models" / "escape.gguf").symlink_to(secret)
    (root / "models" / "up.gguf").symlink_to(Path("..") / "outside" / "secret.gguf")
    return root


def hub_env(hub: HubServer, home: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "0"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, hub, files):
    """The default policy plus --models-dir; HUB_SPEC is already in its cache (pulled by `serve pull`)."""
    env = hub_env(hub, files / "home")
    pulled = subprocess.run([sys.executable, "-m", "serve.cli", "pull", HUB_SPEC], cwd=REPO_ROOT, timeout=300,
                            env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    args = [*SMALL, "--models-dir", str(files / "models")]
    with start_llamacpp_server(tmp_path_factory, "guarded", args, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def pulling(tmp_path_factory, hub):
    home = tmp_path_factory.mktemp("pulling-home")
    with start_llamacpp_server(tmp_path_factory, "pulling", [*SMALL, "--allow-pull"],
                               env=hub_env(hub, home)) as server:
        yield server


def refused_names(files: Path) -> list[str]:
    return ["/etc/passwd", "/etc/shadow", "/nonexistent/x.gguf", "../../etc/passwd", "hf://someone/some-repo",
            str(files / "outside" / "secret.gguf"), "../outside/secret.gguf",
            str(files / "models" / "escape.gguf"), "escape.gguf", "up.gguf", "missing.gguf"]


# --- the guarded server ----------------------------------------------------------------------------------

def test_every_refusal_is_the_same_404_whatever_the_name_points_at(guarded, files, hub):
    hub.reset()
    openai_bodies, ollama_bodies = set(), set()
    with guarded.openai() as client, guarded.http() as http:
        ollama_client = ollama.Client(host=guarded.base_url, timeout=60)
        for name in refused_names(files):
            with pytest.raises(openai.NotFoundError) as refused:
                client.chat.completions.create(model=name, messages=HELLO, max_tokens=1)
            openai_bodies.add(refused.value.response.text.replace(name, "X"))
            with pytest.raises(ollama.ResponseError) as refused_too:
                ollama_client.chat(model=name, messages=HELLO)
            assert refused_too.value.status_code == 404
            ollama_bodies.add(refused_too.value.error.replace(name, "X"))
            raw = http.post("/api/chat", json={"model": name, "messages": HELLO, "stream": False})
            assert raw.status_code == 404
            ollama_bodies.add(raw.text.replace(name, "X"))
    assert len(openai_bodies) == 1, openai_bodies
    error = httpx.Response(404, content=openai_bodies.pop()).json()["error"]
    assert error["message"].startswith("model X is not available; available: smollm2-135m, ")
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "model_not_found", "model")
    assert ollama_bodies == {error["message"], f'{{"error":"{error["message"]}"}}'}
    assert hub.requests == []  # an uncached Hub spec is not even looked up


def test_a_gguf_under_models_dir_loads_by_its_path(guarded, files):
    with guarded.openai() as client:
        for name in (str(files / "models" / "smol-copy.gguf"), "smol-copy.gguf"):
            answer = client.chat.completions.create(model=name, messages=HELLO, max_tokens=4, temperature=0)
            assert answer.model == "smol-copy" and answer.choices[0].message.content


def test_a_model_in_the_hub_cache_loads_without_touching_the_network(guarded, hub):
    hub.reset()
    with guarded.openai() as client:
        answer = client.chat.completions.create(model=HUB_SPEC, messages=HELLO, max_tokens=4, temperature=0)
    assert answer.model == HUB_SPEC.removeprefix("hf://") and answer.choices[0].message.content
    assert hub.requests == []


def test_api_pull_is_refused_without_allow_pull(guarded, hub):
    hub.reset()
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=guarded.base_url, timeout=60).pull(f"hf.co/{REPO}:Q4_1")
    assert refused.value.status_code == 403
    assert "--allow-pull" in refused.value.error and f"`serve pull {HUB_SPEC}`" in refused.value.error
    assert hub.requests == []


# --- --allow-pull ----------------------------------------------------------------------------------------

def test_with_allow_pull_a_hub_spec_is_pulled_and_served(pulling, hub):
    hub.reset()
    with pulling.openai() as client:
        answer = client.chat.completions.create(model=HUB_SPEC, messages=HELLO, max_tokens=4, temperature=0)
    assert answer.model == HUB_SPEC.removeprefix("hf://") and answer.choices[0].message.content
    assert hub.cdn_gets(file_digest(embedded_model_path(), "sha256"))


def test_a_pull_from_a_request_checks_free_disk_space_before_it_starts(pulling, hub):
    hub.reset()
    with pulling.http() as http:
        response = http.post("/v1/chat/completions", json={"model": HUGE_SPEC, "messages": HELLO})
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert message.startswith("not enough disk space in ") and ": need 1.0 PB, " in message
    assert message.endswith(" free")
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=pulling.base_url, timeout=60).pull(HUGE_SPEC.replace("hf://", "hf.co/"))
    assert ": need 1.0 PB, " in refused.value.error
    assert not [r for r in hub.requests if r["server"] == "cdn"]
