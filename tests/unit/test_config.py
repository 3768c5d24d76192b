"""Configuration precedence and validation: defaults < file < SERVE_* env < flags."""
from pathlib import Path

import pytest

from serve.config import PlanChoices, ServerConfig, parse_bytes, resolve_config
from serve.errors import ConfigError


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path):
    config_file = tmp_path / "config.toml"
    config_file.write_text('port = 7000\nhost = "0.0.0.0"\nmax_queue = 5\n')
    environ = {"SERVE_PORT": "7100", "SERVE_MAX_QUEUE": "6"}
    config = resolve_config({"port": 7200, "max_queue": None}, environ, config_file)
    assert (config.port, config.max_queue, config.host) == (7200, 6, "0.0.0.0")
    assert config.keep_alive == 300.0  # default


def test_durations_sizes_and_lists_are_parsed(tmp_path):
    config = resolve_config({"keep_alive": "1h30m", "max_memory": "1.5GiB", "pinned": ["a", "b"],
                             "models": []}, {}, tmp_path / "missing.toml")
    assert config.keep_alive == 5400 and config.max_memory == int(1.5 * 2**30)
    assert config.pinned == ("a", "b") and config.models == ()


@pytest.mark.parametrize("text, size", [("8GiB", 8 * 2**30), ("512M", 512 * 2**20), ("100", 100),
                                        ("2 gb", 2 * 2**30)])
def test_parse_bytes(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("values, fragment", [
    ({"port": 0}, "--port"), ({"context_length": -1}, "context_length"), ({"max_queue": -1}, "--max-queue"),
    ({"max_memory": "lots"}, "memory size"), ({"keep_alive": "soon"}, "keep_alive"), ({"port": "x"}, "number")])
def test_bad_values_fail_with_one_clear_line(values, fragment, tmp_path):
    with pytest.raises(ConfigError, match=fragment):
        resolve_config(values, {}, tmp_path / "missing.toml")


def test_plan_choices_keep_their_top_level_names(tmp_path):
    config_file = tmp_path / "config.toml"
    config_file.write_text('backend = "llamacpp"\nnum_threads = 3\n')
    environ = {"SERVE_CONTEXT_LENGTH": "2048", "SERVE_GPU_MEMORY_UTILIZATION": "0.5"}
    config = resolve_config({"num_parallel": 2, "ray_address": None}, environ, config_file)
    assert config.plan_choices == PlanChoices(backend="llamacpp", context_length=2048, num_threads=3,
                                              num_parallel=2, gpu_memory_utilization=0.5)


@pytest.mark.parametrize("values, fragment", [
    ({"backend": "tensorrt"}, "unknown backend 'tensorrt'; choose one of llamacpp, vllm"),
    ({"num_parallel": 0}, "num_parallel must be positive"),
    ({"gpu_memory_utilization": 1.5}, "gpu-memory-utilization must be in"),
    ({"speculative": "eagle"}, "unknown --speculative 'eagle'; choose one of ngram, draft, off")])
def test_bad_plan_choices_are_refused_once_at_start_up(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        PlanChoices(**values)


def test_what_requests_may_load_is_set_like_every_other_setting(tmp_path):
    config_file = tmp_path / "config.toml"
    config_file.write_text('models_dir = "~/models"\nallow_pull = true\n')
    from_file = resolve_config({}, {}, config_file)
    assert from_file.models_dir == Path("~/models").expanduser() and from_file.allow_pull is True
    from_env = resolve_config({}, {"SERVE_MODELS_DIR": "/srv/models", "SERVE_ALLOW_PULL": "0"}, config_file)
    assert from_env.models_dir == Path("/srv/models") and from_env.allow_pull is False
    from_flags = resolve_config({"models_dir": Path("/m"), "allow_pull": True},
                                {"SERVE_ALLOW_PULL": "no"}, tmp_path / "missing.toml")
    assert from_flags.models_dir == Path("/m") and from_flags.allow_pull is True
    defaults = resolve_config({"allow_pull": None}, {}, tmp_path / "missing.toml")
    assert defaults.models_dir is None and defaults.allow_pull is False
    with pytest.raises(ConfigError, match="allow_pull must be true or false, got 'maybe'"):
        resolve_config({}, {"SERVE_ALLOW_PULL": "maybe"}, tmp_path / "missing.toml")


def test_drain_timeout_and_metrics_key_are_set_like_every_other_setting(tmp_path):
    missing = tmp_path / "missing.toml"
    assert resolve_config({}, {}, missing).drain_timeout == 30.0
    assert resolve_config({}, {}, missing).metrics_key is None
    from_env = resolve_config({}, {"SERVE_DRAIN_TIMEOUT": "1m", "SERVE_METRICS_KEY": "k"}, missing)
    assert from_env.drain_timeout == 60.0 and from_env.metrics_key == "k"
    assert resolve_config({"drain_timeout": "0"}, {"SERVE_DRAIN_TIMEOUT": "1m"}, missing).drain_timeout == 0.0
    with pytest.raises(ConfigError, match="--drain-timeout must be >= 0"):
        resolve_config({"drain_timeout": "-1s"}, {}, missing)
    with pytest.raises(ConfigError, match="drain_timeout"):
        resolve_config({"drain_timeout": "soon"}, {}, missing)


def test_unknown_setting_in_the_file_is_named(tmp_path):
    config_file = tmp_path / "config.toml"
    config_file.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        resolve_config({}, {}, config_file)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        ServerConfig().port = 1
