"""The catalog schema, model specs, GGUF file selection by quant tag, and the small pure helpers of the hub."""
from __future__ import annotations

import argparse
import json
import shutil
import textwrap
import tomllib
from pathlib import Path

import pytest

from serve.cli.models import cmd_models
from serve.models.catalog import (CAPABILITIES, DEFAULT_ALIAS, GGUFSource, embedded_model_path, load_catalog,
                                  parse_catalog, parse_hub_spec, resolve_model)
from serve.errors import ConfigError, HubError, ModelNotFoundError
from serve.models.gguf import read_gguf_info
from serve.models.cache import check_disk_space, human_bytes
from serve.models.select import available_quants, quant_tag, select_explicit, select_gguf, split_info
from serve.models.quantize import default_output

REQUIRED_ALIASES = {"mistral-7b-q4", "mistral-7b-q8", "llama-3.1-8b-q4", "qwen2.5-7b-q4", "qwen2.5-1.5b-q4",
                    "qwen2.5-0.5b-q8", "phi-3.5-mini-q4", "gemma-2-2b-q4", "smollm2-135m", "smollm2-360m",
                    "smollm2-1.7b-q4", "deepseek-r1-distill-qwen-7b-q4",
                    # what people run now (issue 13): chat, reasoning and tools; embeddings; rerankers
                    "qwen3-0.6b-q8", "qwen3-4b-q4", "qwen3-8b-q4", "gemma-3-4b-q4", "smollm3-3b-q4",
                    "phi-4-mini-q4", "deepseek-r1-0528-qwen3-8b-q4", "gpt-oss-20b", "nomic-embed-text-v1.5-q8",
                    "bge-small-en-v1.5-q8", "qwen3-embedding-0.6b-q8", "bge-reranker-v2-m3-q8"}
CATALOG_FILE = Path(__file__).resolve().parents[2] / "models.toml"

GOOD_ENTRY = """
[models.tiny]
gguf = { repo = "org/tiny-GGUF", quant = "Q4_K_M" }
vllm = { repo = "org/tiny-AWQ", quantization = "awq" }
context_length = 2048
num_params = 1_000_000
license = "mit"
download_bytes = 1_000
"""


def test_shipped_catalog_has_the_required_real_entries():
    catalog = load_catalog()
    assert REQUIRED_ALIASES <= set(catalog.models)
    assert len(catalog.models) >= 12
    for name, spec in catalog.models.items():
        assert spec.gguf is not None and spec.gguf.repo and "/" in spec.gguf.repo, name
        assert (spec.gguf.file is None) != (spec.gguf.quant is None), name
        assert spec.vllm is not None and spec.vllm.repo, name
        if "chat" in spec.capabilities:
            assert spec.context_length >= 2048 and spec.num_params > 100_000_000, name
        else:  # encoders are small: bge-small has 33M parameters and 512 tokens
            assert spec.context_length >= 512 and spec.num_params > 10_000_000, name
        assert spec.license and spec.download_bytes > 0, name
        # 4-bit files hold about 0.55-0.75 bytes per parameter, 8-bit ones 1.06 (small models with large
        # vocabularies keep more in 8-bit embeddings): a size off by a unit or a digit shows here
        assert 0.4 < spec.download_bytes / spec.num_params < 1.5, name


def test_every_shipped_entry_states_what_it_can_do():
    """Stated, not defaulted: the default (chat) exists for user catalogs written before capabilities did."""
    entries = tomllib.loads(CATALOG_FILE.read_text())["models"]
    catalog = load_catalog()
    for name, entry in entries.items():
        assert entry.get("capabilities"), f"{name} does not state its capabilities"
        spec = catalog.get(name)
        assert ("tools" in spec.capabilities) == (spec.tool_format is not None), name
        assert ("reasoning" in spec.capabilities) == (spec.reasoning_format is not None), name
    can = {name: spec.capabilities for name, spec in catalog.models.items()}
    assert can["qwen3-8b-q4"] == {"chat", "tools", "reasoning"} and catalog.get("qwen3-8b-q4").tool_format == "hermes"
    assert catalog.get("gpt-oss-20b").reasoning_format == "harmony" and can["gemma-2-2b-q4"] == {"chat"}
    assert can["nomic-embed-text-v1.5-q8"] == {"embeddings"} and can["bge-reranker-v2-m3-q8"] == {"rerank"}
    assert catalog.get("qwen3-embedding-0.6b-q8").pooling == "last"


def test_default_alias_is_the_embedded_file_and_needs_no_network():
    catalog = load_catalog()
    spec = resolve_model(None, catalog)
    assert spec.name == DEFAULT_ALIAS
    assert spec.gguf.embedded and spec.gguf.local_path == embedded_model_path()
    assert spec.gguf.local_path.exists()
    assert spec.gguf.local_path.stat().st_size == spec.download_bytes


@pytest.mark.parametrize("entry, message", [
    (GOOD_ENTRY.replace("license", "licence"), "unknown key(s) licence"),
    (GOOD_ENTRY.replace('quant = "Q4_K_M"', 'quant = "Q4_K_M", sha = "x"'), "gguf: unknown key(s) sha"),
    (GOOD_ENTRY.replace('gguf = { repo = "org/tiny-GGUF", quant = "Q4_K_M" }\n', "").replace(
        'vllm = { repo = "org/tiny-AWQ", quantization = "awq" }\n', ""), "needs a gguf and/or a vllm source"),
    (GOOD_ENTRY.replace("context_length = 2048", 'context_length = "2048"'), "context_length must be an integer"),
    (GOOD_ENTRY.replace("context_length = 2048", "context_length = true"), "context_length must be an integer"),
    (GOOD_ENTRY.replace("num_params = 1_000_000", "num_params = -5"), "num_params must be positive"),
    (GOOD_ENTRY.replace('license = "mit"\n', ""), "missing license"),
    (GOOD_ENTRY.replace('license = "mit"', "license = 3"), "license must be a string"),
    (GOOD_ENTRY.replace('quant = "Q4_K_M"', 'quant = "Q4_K_M", file = "a.gguf"'), "exactly one of file or quant"),
    (GOOD_ENTRY.replace('repo = "org/tiny-GGUF", quant = "Q4_K_M"', 'quant = "Q4_K_M"'), "needs repo"),
    (GOOD_ENTRY.replace('"org/tiny-GGUF"', '"not a repo"'), "repo must look like org/name"),
    (GOOD_ENTRY.replace('quant = "Q4_K_M"', 'file = "model.bin"'), "file must name a .gguf file"),
    (GOOD_ENTRY.replace('quant = "Q4_K_M"', 'quant = "Q4_K_M", quantize_to = "Q3_K_S"'), "quantize_to must be"),
    (GOOD_ENTRY.replace('quantization = "awq"', 'quantization = "int3"'), "quantization must be one of"),
    (GOOD_ENTRY.replace('vllm = { repo = "org/tiny-AWQ", quantization = "awq" }', 'vllm = "org/tiny"'),
     "vllm must be a table"),
    (GOOD_ENTRY.replace("[models.tiny]", "[models.tiny"), "not valid TOML"),
    (GOOD_ENTRY + 'capabilities = ["chat", "telepathy"]\n',
     "capabilities must be one of chat, tools, reasoning, embeddings, rerank, vision, got 'telepathy'"),
    (GOOD_ENTRY + "capabilities = []\n", "capabilities must be a non-empty list"),
    (GOOD_ENTRY + 'capabilities = "chat"\n', "capabilities must be a non-empty list"),
    (GOOD_ENTRY + 'capabilities = ["tools"]\ntool_format = "hermes"\n', "tools and reasoning need chat"),
    (GOOD_ENTRY + 'capabilities = ["chat", "tools"]\n', "capabilities include tools, so give tool_format"),
    (GOOD_ENTRY + 'capabilities = ["chat", "tools"]\ntool_format = "xml"\n',
     "tool_format must be one of hermes, llama3_json, mistral, phi4_mini_json, gpt_oss, got 'xml'"),
    (GOOD_ENTRY + 'capabilities = ["chat"]\ntool_format = "hermes"\n',
     "tool_format is set but capabilities do not include tools"),
    (GOOD_ENTRY + 'capabilities = ["chat", "reasoning"]\nreasoning_format = "cot"\n',
     "reasoning_format must be one of think_tags, harmony, got 'cot'"),
    (GOOD_ENTRY + 'capabilities = ["chat", "reasoning"]\n', "so give reasoning_format"),
    (GOOD_ENTRY + 'capabilities = ["chat"]\npooling = "mean"\n', "pooling is set but capabilities include neither"),
    (GOOD_ENTRY + 'capabilities = ["embeddings"]\npooling = "max"\n', "pooling must be one of mean, cls, last, rank"),
])
def test_malformed_entry_fails_the_schema_with_one_clear_line(entry, message):
    with pytest.raises(ConfigError) as info:
        parse_catalog(entry, "user.toml")
    assert message in info.value.message
    assert info.value.message.startswith("user.toml")
    assert "\n" not in info.value.message


def test_good_entry_parses_and_f16_sources_are_quantized_once_by_default():
    spec = parse_catalog(GOOD_ENTRY).get("tiny")
    assert spec.gguf == GGUFSource(repo="org/tiny-GGUF", quant="Q4_K_M")
    assert spec.vllm.quantization == "awq" and spec.context_length == 2048
    assert spec.capabilities == {"chat"} and spec.tool_format is None and spec.pooling is None  # the default
    agent = parse_catalog(GOOD_ENTRY + 'capabilities = ["chat", "tools", "reasoning"]\ntool_format = "gpt_oss"\n'
                          'reasoning_format = "harmony"\n').get("tiny")
    assert agent.capabilities == {"chat", "tools", "reasoning"}
    assert (agent.tool_format, agent.reasoning_format) == ("gpt_oss", "harmony")
    embedder = parse_catalog(GOOD_ENTRY + 'capabilities = ["embeddings"]\npooling = "cls"\n').get("tiny")
    assert embedder.capabilities == {"embeddings"} and embedder.pooling == "cls"
    f16 = parse_catalog(GOOD_ENTRY.replace('quant = "Q4_K_M"', 'quant = "F16"')).get("tiny")
    assert f16.gguf.quantize_to == "Q4_K_M"
    bf16 = parse_catalog(GOOD_ENTRY.replace('quant = "Q4_K_M"', 'file = "m-bf16.gguf", quantize_to = "q8_0"'))
    assert bf16.get("tiny").gguf.quantize_to == "Q8_0"


def test_user_catalog_extends_and_overrides(tmp_path):
    user = tmp_path / "models.toml"
    user.write_text(GOOD_ENTRY + textwrap.dedent("""
        [models.smollm2-360m]
        gguf = { repo = "someone/SmolLM2-360M-GGUF", quant = "Q4_K_M" }
        context_length = 4096
        num_params = 361_821_120
        license = "apache-2.0"
        download_bytes = 270_000_000
    """))
    shipped = load_catalog()
    merged = load_catalog(user)
    assert set(merged.models) == set(shipped.models) | {"tiny"}
    assert merged.get("smollm2-360m").gguf.repo == "someone/SmolLM2-360M-GGUF"
    assert merged.get("smollm2-360m").vllm is None  # replaced whole, not merged key by key
    assert merged.get("mistral-7b-q4") == shipped.get("mistral-7b-q4")


def test_unknown_alias_names_close_matches():
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("mistral-7b-q5", load_catalog())
    assert "did you mean" in info.value.message and "mistral-7b-q4" in info.value.message


def test_hub_specs():
    tagged = parse_hub_spec("hf://bartowski/Mistral-7B-Instruct-v0.3-GGUF:q4_k_m")
    assert tagged.gguf == GGUFSource(repo="bartowski/Mistral-7B-Instruct-v0.3-GGUF", quant="q4_k_m")
    assert tagged.name == "bartowski/Mistral-7B-Instruct-v0.3-GGUF:q4_k_m" and tagged.vllm is None
    by_file = parse_hub_spec("hf://Qwen/Qwen2.5-7B-Instruct-GGUF/sub/qwen2.5-7b-instruct-q8_0.gguf")
    assert by_file.gguf == GGUFSource(repo="Qwen/Qwen2.5-7B-Instruct-GGUF", file="sub/qwen2.5-7b-instruct-q8_0.gguf")
    bare = parse_hub_spec("hf://Qwen/Qwen2.5-7B-Instruct-AWQ")
    assert bare.gguf.repo == bare.vllm.repo == "Qwen/Qwen2.5-7B-Instruct-AWQ" and bare.gguf.quant is None
    for bad in ("hf://justone", "hf://org/repo:Q4 K", "hf://org/repo/config.json", "hf://org/repo:"):
        with pytest.raises(ConfigError, match="invalid Hub spec"):
            parse_hub_spec(bad)


def test_local_paths(tmp_path):
    catalog = load_catalog()
    with pytest.raises(ConfigError, match="model file not found"):
        resolve_model(str(tmp_path / "missing.gguf"), catalog)
    local = tmp_path / "mine.gguf"
    shutil.copyfile(embedded_model_path(), local)
    spec = resolve_model(str(local), catalog)
    assert spec.name == "mine" and spec.gguf.local_path == local.resolve()
    assert resolve_model(str(tmp_path), catalog).vllm.local_path == tmp_path.resolve()


BARTOWSKI = ["README.md", "Mistral-7B-Instruct-v0.3-IQ4_XS.gguf", "Mistral-7B-Instruct-v0.3-Q4_K_M.gguf",
             "Mistral-7B-Instruct-v0.3-Q4_K_S.gguf", "Mistral-7B-Instruct-v0.3-Q8_0.gguf",
             "Mistral-7B-Instruct-v0.3-f16.gguf", "Mistral-7B-Instruct-v0.3.imatrix"]
QWEN = ["LICENSE", "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf", "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf",
        "qwen2.5-7b-instruct-q8_0-00001-of-00003.gguf", "qwen2.5-7b-instruct-q8_0-00002-of-00003.gguf",
        "qwen2.5-7b-instruct-q8_0-00003-of-00003.gguf", "qwen2.5-7b-instruct-fp16-00001-of-00004.gguf"]


def test_quant_tag_picks_files_like_llama_server():
    assert select_gguf(BARTOWSKI, "q4_k_m", "r") == ["Mistral-7B-Instruct-v0.3-Q4_K_M.gguf"]
    assert select_gguf(BARTOWSKI, "Q4_K_S", "r") == ["Mistral-7B-Instruct-v0.3-Q4_K_S.gguf"]
    assert select_gguf(BARTOWSKI, None, "r") == ["Mistral-7B-Instruct-v0.3-Q4_K_M.gguf"]
    assert select_gguf(BARTOWSKI, "F16", "r") == ["Mistral-7B-Instruct-v0.3-f16.gguf"]
    assert select_gguf(["m.Q4_K_M.gguf", "mmproj-m-Q4_K_M.gguf"], "Q4_K_M", "r") == ["m.Q4_K_M.gguf"]
    # IQ4_XS must not answer for a Q4 tag that is a suffix of it
    assert select_gguf(["m-IQ4_NL.gguf", "m-Q4_0.gguf"], "Q4_0", "r") == ["m-Q4_0.gguf"]


def test_split_files_are_selected_whole_and_single_files_preferred():
    assert select_gguf(QWEN, "Q4_K_M", "r") == QWEN[1:3]
    assert select_gguf(QWEN, "q8_0", "r") == QWEN[3:6]
    mixed = ["split/m-Q4_K_M-00001-of-00002.gguf", "split/m-Q4_K_M-00002-of-00002.gguf", "m-Q4_K_M.gguf"]
    assert select_gguf(mixed, "Q4_K_M", "r") == ["m-Q4_K_M.gguf"]
    with pytest.raises(HubError, match="incomplete"):
        select_gguf(QWEN, "FP16", "r")
    assert select_explicit(QWEN, "QWEN2.5-7B-INSTRUCT-Q4_K_M-00002-of-00002.gguf", "r") == QWEN[1:3]
    assert split_info("a/m-Q8_0-00002-of-00003.gguf") == ("a/m-Q8_0", 2, 3)


def test_missing_quant_lists_what_the_repo_has():
    with pytest.raises(ModelNotFoundError) as info:
        select_gguf(BARTOWSKI, "Q5_K_M", "bartowski/Mistral-7B-Instruct-v0.3-GGUF")
    assert info.value.message == ("bartowski/Mistral-7B-Instruct-v0.3-GGUF has no GGUF file for quant Q5_K_M; "
                                  "available quants: F16, IQ4_XS, Q4_K_M, Q4_K_S, Q8_0")
    assert available_quants(QWEN) == ["FP16", "Q4_K_M", "Q8_0"]
    assert quant_tag("SmolLM2-135M-Instruct.Q4_1.gguf") == "Q4_1"
    with pytest.raises(ModelNotFoundError, match="no GGUF model files"):
        select_gguf(["config.json", "model.safetensors"], None, "org/awq")
    with pytest.raises(ModelNotFoundError, match="has no file"):
        select_explicit(BARTOWSKI, "nope.gguf", "r")


def test_disk_check_compares_needed_with_free(tmp_path):
    check_disk_space(1, tmp_path)
    with pytest.raises(HubError) as info:
        check_disk_space(10**18, tmp_path / "not" / "yet")
    assert info.value.message.startswith(f"not enough disk space in {tmp_path / 'not' / 'yet'}: need 1000.0 PB")
    assert human_bytes(98_362_432) == "98.4 MB" and human_bytes(512) == "512 B"


def test_gguf_header_reader_tells_quantized_from_plain(tmp_path):
    info = read_gguf_info(embedded_model_path())
    assert info.quantized_types() == ["Q4_1", "Q8_0"] and info.metadata["general.architecture"] == "llama"
    assert info.split_count == 1 and len(info.tensor_types) == 272
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello")
    with pytest.raises(ConfigError, match="is not a GGUF file"):
        read_gguf_info(bad)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(embedded_model_path().read_bytes()[:1000])
    with pytest.raises(ConfigError, match="not a valid GGUF file"):
        read_gguf_info(truncated)


def test_default_quantize_output_replaces_the_precision_tag():
    assert default_output(Path("/m/SmolLM2-F16.gguf"), "q4_k_m") == Path("/m/SmolLM2-Q4_K_M.gguf")
    assert default_output(Path("/m/model.bf16.gguf"), "q8_0") == Path("/m/model-Q8_0.gguf")
    assert default_output(Path("/m/model.gguf"), "q6_k") == Path("/m/model-Q6_K.gguf")


def _serve_models(capsys, *, as_json: bool) -> str:
    assert cmd_models(argparse.Namespace(json=as_json, catalog_file=None)) == 0
    return capsys.readouterr().out


def test_serve_models_shows_capabilities_within_100_columns(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("serve.config.USER_CATALOG_FILE", tmp_path / "none.toml")
    listing = _serve_models(capsys, as_json=False).splitlines()
    assert listing[0].split() == ["NAME", "PARAMS", "DOWNLOAD", "HAVE", "QUANT", "CONTEXT", "CAPABILITIES"]
    rows = {line.split()[0]: line.split() for line in listing[1:] if not line.startswith(" ")}
    assert set(rows) == set(load_catalog().models)
    assert all(len(line) <= 100 for line in listing if not line.startswith(" ")), listing
    assert rows["qwen3-8b-q4"][-3:] == ["Q4_K_M", "32K", "chat,tools,reasoning"]
    assert rows["gpt-oss-20b"][-3:] == ["MXFP4", "128K", "chat,tools,reasoning"]
    assert rows["bge-small-en-v1.5-q8"][-3:] == ["Q8_0", "512", "embeddings"]
    assert rows["smollm2-135m"][-3:] == ["Q4_1", "8K", "chat"]  # the embedded file, not its Hub fallback


def test_serve_models_json_states_capabilities_and_formats(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("serve.config.USER_CATALOG_FILE", tmp_path / "none.toml")
    rows = {row["name"]: row for row in json.loads(_serve_models(capsys, as_json=True))}
    for row in rows.values():
        assert row["capabilities"] and set(row["capabilities"]) <= set(CAPABILITIES)
    assert rows["qwen3-8b-q4"]["capabilities"] == ["chat", "tools", "reasoning"]  # the vocabulary's order
    assert (rows["qwen3-8b-q4"]["tool_format"], rows["qwen3-8b-q4"]["reasoning_format"]) == ("hermes", "think_tags")
    reranker = rows["bge-reranker-v2-m3-q8"]
    assert reranker["capabilities"] == ["rerank"] and reranker["pooling"] == "rank"
    assert rows["mistral-7b-q4"]["tool_format"] == "mistral" and rows["mistral-7b-q4"]["pooling"] is None
