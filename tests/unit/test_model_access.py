"""What a request may load (serve/models/access.py), against real files: catalog aliases, command-line
specs, a real Hugging Face cache layout, and a --models-dir with paths and symbolic links in and out of it.

Every refusal must be the same words apart from the name, and must not touch the named path: a spy on the
real os.stat / os.lstat / os.readlink and an audit hook on open() record every path the policy looks at.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from pathlib import Path

import pytest

from serve.config import PlanChoices, ServerConfig
from serve.errors import ConfigError, ModelNotAvailableError, PullNotAllowedError
from serve.models import cache
from serve.models.access import MAX_NAMES_LISTED, ModelAccess, path_inside
from serve.models.catalog import DEFAULT_ALIAS, Catalog, ModelSpec, embedded_model_path, load_catalog

REPO = "someone/Tiny-GGUF"
FILE = "tiny-Q4_K_M.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@functools.lru_cache(maxsize=1)
def embedded_sha256() -> str:
    return cache.file_digest(embedded_model_path(), "sha256")


def place_gguf(path: Path) -> Path:
    """A real GGUF at `path` (a hard link to the embedded model when the file system allows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(embedded_model_path(), path)
    except OSError:
        shutil.copyfile(embedded_model_path(), path)
    return path


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """A Hugging Face cache in tmp_path holding REPO's FILE, laid out as huggingface_hub lays it out."""
    from huggingface_hub import constants

    cache_dir = tmp_path / "hf" / "hub"
    storage = cache.repo_dir(cache_dir, REPO)
    blob = place_gguf(storage / "blobs" / embedded_sha256())  # a blob is named by its checksum, checked on use
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    pointer = storage / "snapshots" / COMMIT / FILE
    pointer.parent.mkdir(parents=True)
    pointer.symlink_to(Path("../../blobs") / blob.name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    cache.hub_settings.cache_clear()
    yield cache_dir
    cache.hub_settings.cache_clear()


@pytest.fixture
def models_dir(tmp_path) -> Path:
    """--models-dir with a GGUF in it, and a GGUF beside it (outside) that links try to reach."""
    inside = tmp_path / "models"
    place_gguf(inside / "inside.gguf")
    place_gguf(tmp_path / "outside" / "outside.gguf")
    return inside


def access(catalog: Catalog, **config) -> ModelAccess:
    return ModelAccess.from_config(ServerConfig(**config), catalog)


_ACCESS_LOG: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _ACCESS_LOG is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _ACCESS_LOG.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@contextlib.contextmanager
def file_access(monkeypatch):
    """Every path opened, stat'ed, lstat'ed or read as a link inside the block (the real calls run)."""
    global _ACCESS_LOG
    seen: list[str] = []
    for name in ("stat", "lstat", "readlink"):
        real = getattr(os, name)

        def spy(path, *args, _real=real, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)):
                seen.append(os.fsdecode(path))
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(os, name, spy)
    _ACCESS_LOG = seen
    try:
        yield seen
    finally:
        _ACCESS_LOG = None
        monkeypatch.undo()


def refusal_text(policy: ModelAccess, name: str) -> str:
    with pytest.raises(ModelNotAvailableError) as refused:
        policy.resolve(name)
    assert refused.value.status_code == 404 and refused.value.param == "model"
    return refused.value.message.replace(name, "X")


# --- what a request may name -----------------------------------------------------------------------------

def test_a_catalog_alias_and_the_default_are_allowed(catalog):
    policy = access(catalog)
    assert policy.resolve("qwen2.5-0.5b-q8") == catalog.get("qwen2.5-0.5b-q8")
    assert policy.resolve(None) == catalog.get(DEFAULT_ALIAS)


def test_a_command_line_path_is_allowed_anywhere(catalog, models_dir):
    outside = str(models_dir.parent / "outside" / "outside.gguf")
    spec = access(catalog, models=(outside,)).resolve(outside)
    assert spec.name == "outside" and spec.gguf.local_path == Path(outside).resolve()


def test_a_cached_hub_spec_is_served_from_the_cache(catalog, hf_cache):
    for name in (f"hf://{REPO}:Q4_K_M", f"hf://{REPO}/{FILE}", f"hf://{REPO}"):
        spec = access(catalog).resolve(name)
        assert spec.gguf.local_path == hf_cache / cache.repo_dir(hf_cache, REPO).name / "snapshots" / COMMIT / FILE
        assert spec.vllm is None  # no checkpoint in the cache: the plan cannot pick a backend it would fetch


def test_an_uncached_hub_spec_needs_allow_pull(catalog, hf_cache):
    name = "hf://someone/some-repo:Q4_K_M"
    assert refusal_text(access(catalog), name) == refusal_text(access(catalog), "/etc/passwd")
    spec = access(catalog, allow_pull=True).resolve(name)
    assert spec.gguf.repo == "someone/some-repo" and spec.gguf.local_path is None  # pulled at load
    other_quant = f"hf://{REPO}:Q8_0"  # the repo is cached, that file is not
    with pytest.raises(ModelNotAvailableError):
        access(catalog).resolve(other_quant)


def test_a_malformed_hub_spec_is_a_400_from_the_name_alone(catalog):
    with pytest.raises(ConfigError, match="invalid Hub spec"):
        access(catalog).resolve("hf://not a repo")


# --- paths -----------------------------------------------------------------------------------------------

def test_paths_are_refused_without_models_dir_and_nothing_is_touched(catalog, monkeypatch, models_dir):
    policy = access(catalog)
    names = ["/etc/passwd", "/etc/shadow", "/nonexistent/x.gguf", "../../etc/passwd",
             str(models_dir / "inside.gguf"), "inside.gguf"]
    with file_access(monkeypatch) as seen:
        texts = {refusal_text(policy, name) for name in names}
    assert seen == []
    assert len(texts) == 1
    assert texts.pop().startswith("model X is not available; available: smollm2-135m")


def test_a_file_under_models_dir_loads_by_its_path(catalog, models_dir):
    policy = access(catalog, models_dir=models_dir)
    for name in (str(models_dir / "inside.gguf"), "inside.gguf", "./inside.gguf", "sub/../inside.gguf"):
        if name.startswith("sub/"):
            (models_dir / "sub").mkdir(exist_ok=True)
        spec = policy.resolve(name)
        assert spec.name == "inside" and spec.gguf.local_path == models_dir / "inside.gguf"


def test_dot_dot_and_absolute_paths_out_of_models_dir_are_refused_untouched(catalog, monkeypatch, models_dir):
    policy = access(catalog, models_dir=models_dir)
    names = ["../outside/outside.gguf", "sub/../../outside/outside.gguf", str(models_dir.parent / "outside" /
             "outside.gguf"), f"{models_dir}/../outside/outside.gguf", "/etc/passwd", "../../../../etc/shadow"]
    with file_access(monkeypatch) as seen:
        texts = {refusal_text(policy, name) for name in names}
    assert len(texts) == 1
    assert all(Path(path).is_relative_to(models_dir) for path in seen), seen


def test_symlinks_out_of_models_dir_are_refused_without_looking_at_their_target(catalog, monkeypatch, models_dir):
    outside = models_dir.parent / "outside"
    (models_dir / "absolute.gguf").symlink_to(outside / "outside.gguf")
    (models_dir / "relative.gguf").symlink_to(Path("..") / "outside" / "outside.gguf")
    (models_dir / "dir").symlink_to(outside)
    (models_dir / "loop.gguf").symlink_to("loop.gguf")
    policy = access(catalog, models_dir=models_dir)
    with file_access(monkeypatch) as seen:
        texts = {refusal_text(policy, name)
                 for name in ("absolute.gguf", "relative.gguf", "dir/outside.gguf", "loop.gguf")}
    assert len(texts) == 1
    assert seen and all(Path(path).is_relative_to(models_dir) for path in seen), seen


def test_symlinks_that_stay_inside_models_dir_are_followed(catalog, models_dir):
    (models_dir / "sub").mkdir()
    (models_dir / "sub" / "relative.gguf").symlink_to(Path("..") / "inside.gguf")
    (models_dir / "absolute.gguf").symlink_to(models_dir / "inside.gguf")
    (models_dir / "alias").symlink_to("sub")
    policy = access(catalog, models_dir=models_dir)
    for name in ("sub/relative.gguf", "absolute.gguf", "alias/relative.gguf"):
        assert policy.resolve(name).gguf.local_path == models_dir / "inside.gguf"


def test_a_missing_file_and_an_existing_one_get_the_same_refusal(catalog, models_dir):
    (models_dir.parent / "outside" / "notes.txt").write_text("not a model")
    policy = access(catalog, models_dir=models_dir)
    outside = models_dir.parent / "outside"
    texts = {refusal_text(policy, str(path)) for path in (
        outside / "outside.gguf", outside / "notes.txt", outside / "missing.gguf", models_dir / "missing.gguf",
        "missing.gguf", "/nonexistent/x.gguf", "no-such-alias")}
    assert len(texts) == 1


def test_path_inside_never_returns_the_directory_itself(models_dir):
    root = models_dir.resolve()
    assert path_inside(root, "") is None and path_inside(root, ".") is None and path_inside(root, "a/..") is None
    assert path_inside(root, "bad\0name") is None


def test_models_dir_must_be_a_directory(catalog, tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        access(catalog, models_dir=tmp_path / "missing")


# --- the refusal and pulls -------------------------------------------------------------------------------

def test_the_refusal_lists_loaded_models_first_then_the_catalog_briefly():
    many = Catalog({f"model-{i:02}": ModelSpec(name=f"model-{i:02}") for i in range(30)})
    with pytest.raises(ModelNotAvailableError) as refused:
        ModelAccess(many).resolve("/etc/passwd", loaded=["mine"])
    assert refused.value.message == (
        "model /etc/passwd is not available; available: mine, "
        + ", ".join(f"model-{i:02}" for i in range(MAX_NAMES_LISTED - 1))
        + f" and {30 - MAX_NAMES_LISTED + 1} more")


def test_pulls_over_http_need_allow_pull(catalog):
    with pytest.raises(PullNotAllowedError, match="--allow-pull") as refused:
        access(catalog).resolve_pull("hf://someone/some-repo")
    assert refused.value.status_code == 403 and "`serve pull hf://someone/some-repo`" in refused.value.message
    assert access(catalog, allow_pull=True).resolve_pull("hf://someone/some-repo").gguf.repo == "someone/some-repo"
    with pytest.raises(ModelNotAvailableError):
        access(catalog, allow_pull=True).resolve_pull("/etc/passwd")


# --- a draft model (speculative decoding) ------------------------------------------------------------------

def draft_refusal(policy: ModelAccess, name: str) -> str:
    with pytest.raises(ModelNotAvailableError) as refused:
        policy.resolve_draft(name)
    assert refused.value.status_code == 404 and refused.value.param == "model"
    return refused.value.message


def test_the_command_line_draft_model_is_allowed_anywhere(catalog, models_dir):
    outside = str(models_dir.parent / "outside" / "outside.gguf")
    spec = access(catalog, plan_choices=PlanChoices(draft_model=outside)).resolve_draft(outside)
    assert spec.gguf.local_path == Path(outside).resolve()
    # the operator named it as a draft, not as a model requests may load
    assert "not available" in refusal_text(access(catalog, plan_choices=PlanChoices(draft_model=outside)), outside)


def test_a_catalog_entry_s_draft_passes_the_rules_of_a_request_s_name(catalog, monkeypatch, models_dir, hf_cache):
    policy = access(catalog, models_dir=models_dir)
    assert policy.resolve_draft("qwen2.5-0.5b-q8") == catalog.get("qwen2.5-0.5b-q8")  # an alias
    assert policy.resolve_draft("inside.gguf").gguf.local_path == models_dir / "inside.gguf"
    assert policy.resolve_draft(f"hf://{REPO}:Q4_K_M").gguf.local_path is not None  # cached
    outside = str(models_dir.parent / "outside" / "outside.gguf")
    with file_access(monkeypatch) as seen:
        message = draft_refusal(policy, outside)
    assert all(Path(path).is_relative_to(models_dir) for path in seen), seen  # refused untouched
    assert message.startswith(f"draft model {outside} is not available") and "--draft-model" in message
    uncached = "hf://someone/some-repo:Q4_K_M"
    assert "--allow-pull" in draft_refusal(policy, uncached)
    assert access(catalog, allow_pull=True).resolve_draft(uncached).gguf.repo == "someone/some-repo"


def test_loading_a_model_whose_draft_is_refused_stops_at_the_plan(catalog, models_dir):
    from dataclasses import replace

    from machines import load_machine

    from serve.runtime.loader import ModelLoader

    loader = ModelLoader(ServerConfig(models_dir=models_dir), catalog, load_machine("avx512-amx-m7i"))
    model = catalog.get(DEFAULT_ALIAS)
    with pytest.raises(ModelNotAvailableError, match="draft model .*outside.gguf is not available"):
        loader.make_plan(replace(model, draft=str(models_dir.parent / "outside" / "outside.gguf")))
    plan = loader.make_plan(replace(model, draft="inside.gguf"))
    assert plan.draft_model == "inside.gguf" and plan.draft_weights_bytes == embedded_model_path().stat().st_size
