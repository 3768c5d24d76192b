"""Incremental detokenization: UTF-8 across tokens, stop strings across tokens."""
from backends.text_output import TextOutput


def feed_all(output: TextOutput, pieces: list[bytes]) -> tuple[str, bool]:
    text, stopped = "", False
    for piece in pieces:
        delta, stopped = output.feed(piece)
        text += delta
        if stopped:
            return text, True
    return text + output.flush(), stopped


def test_multibyte_character_split_across_tokens_is_held_until_complete():
    euro = "€".encode()  # 3 bytes
    output = TextOutput()
    assert output.feed(b"price: " + euro[:1]) == ("price: ", False)
    assert output.feed(euro[1:2]) == ("", False)
    assert output.feed(euro[2:] + b"5") == ("€5", False)


def test_stop_string_split_across_tokens_never_leaks():
    text, stopped = feed_all(TextOutput(stop=("STOP",)), [b"hello S", b"TO", b"P and more"])
    assert (text, stopped) == ("hello ", True)


def test_text_that_only_looks_like_a_stop_prefix_is_released():
    output = TextOutput(stop=("STOP",))
    assert output.feed(b"ST") == ("", False)
    assert output.feed(b"ART") == ("START", False)


def test_earliest_of_several_stop_strings_wins():
    text, stopped = feed_all(TextOutput(stop=("world", "lo")), [b"hello world"])
    assert (text, stopped) == ("hel", True)


def test_flush_releases_held_prefix_when_generation_ends_otherwise():
    output = TextOutput(stop=("\n\n",))
    assert output.feed(b"line\n") == ("line", False)
    assert output.flush() == "\n"


def test_empty_stop_strings_are_ignored():
    assert feed_all(TextOutput(stop=("",)), [b"abc"]) == ("abc", False)


def test_the_stop_string_that_ended_the_text_is_named():
    output = TextOutput(stop=("END", "STOP"))
    assert output.matched_stop is None
    text, stopped = feed_all(output, [b"go S", b"TOP then END"])
    assert (text, stopped, output.matched_stop) == ("go ", True, "STOP")
