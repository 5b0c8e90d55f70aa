"""Stop strings over streamed pieces: the same result however the text is cut."""

from __future__ import annotations

import pytest

from actorexec.actors.engine.stop_strings import StopStringMatcher, validate_stop_strings
from actorexec.actors.engine.text_stream import TextStream
from actorexec.actors.engine.tokenizer import ByteTokenizer
from actorexec.protocol import InvalidRequestError

TEXT = "The quick brown fox jumps over the lazy dog. The end."


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool, list[str]]:
    matcher = StopStringMatcher(stops)
    emitted, stopped = [], False
    for piece in pieces:
        out, stopped = matcher.push(piece)
        emitted.append(out)
        if stopped:
            break
    if not stopped:
        emitted.append(matcher.flush())
    return "".join(emitted), stopped, emitted


def cuts(text: str, step: int) -> list[str]:
    return [text[i:i + step] for i in range(0, len(text), step)]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, len(TEXT)])
@pytest.mark.parametrize("stops, expected", [
    (["fox"], "The quick brown "),
    (["lazy dog", "jumps"], "The quick brown fox "),          # the earliest match wins
    (["The"], ""),
    ([". The"], "The quick brown fox jumps over the lazy dog"),
    (["cat"], TEXT),                                          # no match: everything, in the end
    (["end.!"], TEXT),                                        # a prefix to the very end
])
def test_output_is_the_text_before_the_first_stop_string_for_any_cut(stops, expected, step):
    text, stopped, _ = run(stops, cuts(TEXT, step))
    assert text == expected and stopped == (expected != TEXT)


def test_a_possible_stop_string_start_is_held_back_until_decided():
    matcher = StopStringMatcher(["world"])
    assert matcher.push("Hello wo") == ("Hello ", False)      # "wo" might begin "world"
    assert matcher.push("nder") == ("wonder", False)          # it did not
    assert matcher.push(" wor") == (" ", False)
    assert matcher.push("ld!") == ("", True)                  # the stop string is not emitted
    assert matcher.matched == "world"


def test_overlapping_prefixes_hold_the_longest_ambiguous_tail():
    matcher = StopStringMatcher(["abab"])
    assert matcher.push("xaba") == ("x", False)
    assert matcher.push("c") == ("abac", False)


def test_text_stream_flushes_held_text_and_unfinished_characters_when_finished():
    tok = ByteTokenizer(add_bos=False)
    stream = TextStream(tok.detokenizer(), stops=["ab"])
    ids = tok.encode("xa✓")
    out = [stream.push([t], i + 1, finished=False) for i, t in enumerate(ids[:-1])]
    assert "".join(text for text, _ in out) == "x"             # "a" and half of ✓ held
    text, stopped = stream.push(ids[-1:], len(ids), finished=True)
    assert (text, stopped) == ("a✓", False)


def test_stop_strings_are_not_looked_for_before_min_tokens():
    tok = ByteTokenizer(add_bos=False)
    stream = TextStream(tok.detokenizer(), stops=["a"], min_tokens=2)
    assert stream.push(tok.encode("a"), 1, finished=False) == ("a", False)
    assert stream.push(tok.encode("ba"), 3, finished=False) == ("b", True)


@pytest.mark.parametrize("bad", [[""], ["x" * 300], ["s"] * 17, [3]])
def test_bad_stop_strings_are_rejected(bad):
    with pytest.raises(InvalidRequestError):
        validate_stop_strings(bad)
