"""`GET /` by Accept header and the chat page's assets, over the real app with an empty pool (no model)."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from serve.api.app import create_app
from serve.config import ServerConfig
from serve.models.catalog import load_catalog
from serve.placement.hardware import probe
from serve.runtime.loader import ModelLoader
from serve.runtime.pool import ModelPool, PoolLimits

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def app_client(config: ServerConfig) -> TestClient:
    catalog = load_catalog()
    pool = ModelPool(ModelLoader(config, catalog, probe()), PoolLimits(max_memory_bytes=0))
    return TestClient(create_app(pool, config, catalog), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client():
    with app_client(ServerConfig()) as test_client:
        yield test_client


def test_a_browser_gets_the_page_and_everyone_else_the_ollama_text(client):
    page = client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>quantserve chat</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for accept in (None, "*/*", "application/json", "text/plain"):
        headers = {"Accept": accept} if accept else {}
        other = client.get("/", headers=headers)
        assert other.status_code == 200 and other.text == "Ollama is running", accept
        assert other.headers["content-type"].startswith("text/plain")
    assert client.head("/", headers={"Accept": BROWSER_ACCEPT}).status_code == 200


def test_the_page_loads_only_its_own_assets(client):
    page = client.get("/", headers={"Accept": BROWSER_ACCEPT}).text
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sorted(sources) == ["/ui/app.js", "/ui/style.css"]  # nothing from a CDN
    script = client.get("/ui/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "/v1/chat/completions" in script.text and "include_usage" in script.text
    assert "http://" not in script.text and "https://" not in script.text  # no remote URL
    style = client.get("/ui/style.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    missing = client.get("/ui/nope.js")
    assert missing.status_code == 404 and "nope.js" in missing.text
    assert client.get("/ui/../serve/config.py").status_code == 404


def test_with_an_api_key_the_page_is_open_and_the_api_is_not():
    with app_client(ServerConfig(api_key="secret")) as guarded:
        assert guarded.get("/", headers={"Accept": BROWSER_ACCEPT}).status_code == 200
        assert guarded.get("/").text == "Ollama is running"
        assert guarded.get("/ui/app.js").status_code == 200 and guarded.get("/ui/style.css").status_code == 200
        assert guarded.get("/v1/models").status_code == 401
        assert guarded.get("/ui/nope.js").status_code == 401  # only the page's own paths are open
        assert guarded.get("/v1/models", headers={"Authorization": "Bearer secret"}).status_code == 200
