import pytest

from serve.duration import parse_duration


@pytest.mark.parametrize("text, seconds", [("5m", 300), ("1h30m", 5400), ("10s", 10), ("250ms", 0.25),
                                           ("0", 0), ("-1", -1), ("-1m", -60), (" 42 ", 42), (1.5, 1.5)])
def test_parses_go_durations_and_numbers(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "1x", "5m3", True])
def test_rejects_garbage_with_a_hint(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
