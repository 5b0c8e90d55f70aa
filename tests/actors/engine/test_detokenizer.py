"""Streaming detokenization with real tokenizers: byte-level BPE, Metaspace, byte fallback.

The reference is what a full decode says: the text a stream emits for output
tokens after a prompt must equal ``decode(prompt + output)`` minus
``decode(prompt)``, with every character whole when emitted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actorexec.actors.engine.tokenizer import HFTokenizer, load_tokenizer
from tests.actors.engine.tokenizer_files import FAMILIES

TEXTS = ["Hello world, this is a test", "héllo wörld ✓ 日本語", "the lazy dog naïve café ✓✓"]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              ) -> HFTokenizer:
    directory = FAMILIES[request.param](tmp_path_factory.mktemp(request.param))
    tok = load_tokenizer(directory)
    assert isinstance(tok, HFTokenizer)
    return tok


def stream(tok: HFTokenizer, prompt: list[int], output: list[int]) -> list[str]:
    detok = tok.detokenizer(prompt)
    return [detok.step([t]) for t in output] + [detok.finish()]


def expected(tok: HFTokenizer, prompt: list[int], output: list[int]) -> str:
    before, after = tok.decode(prompt), tok.decode(prompt + output)
    assert after.startswith(before)
    return after[len(before):]


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_text_equals_the_full_decode_at_every_split(tokenizer, text):
    ids = tokenizer.encode(text)
    for split in range(1, len(ids)):
        prompt, output = ids[:split], ids[split:]
        if tokenizer.decode(prompt).endswith("\ufffd"):
            continue        # a prompt made from text never ends inside a character
        pieces = stream(tokenizer, prompt, output)
        assert "".join(pieces) == expected(tokenizer, prompt, output), (split, pieces)
        assert not any("\ufffd" in p for p in pieces), pieces   # characters arrive whole


def test_the_first_generated_word_keeps_its_leading_space(tokenizer):
    full = tokenizer.encode("Hello world")
    prompt = tokenizer.encode("Hello")
    assert full[:len(prompt)] == prompt
    output = full[len(prompt):]
    # Decoded alone, Metaspace output loses the space; a stream must not.
    assert "".join(stream(tokenizer, prompt, output)) == " world"


def test_an_unfinished_character_is_held_then_flushed_at_the_end(tokenizer):
    ids = tokenizer.encode("ok ✓", add_special_tokens=False)
    cuts = [i for i in range(1, len(ids)) if tokenizer.decode(ids[:i]).endswith("\ufffd")]
    if not cuts:
        pytest.skip("this tokenizer has no way to split ✓ (it is <unk>)")
    prompt = tokenizer.encode("x")
    pieces = stream(tokenizer, prompt, ids[:cuts[0]])
    assert "\ufffd" not in "".join(pieces[:-1])       # held while it might complete
    assert pieces[-1].endswith("\ufffd")               # flushed when the request ends
    assert "".join(pieces) == expected(tokenizer, prompt, ids[:cuts[0]])


def test_each_step_decodes_a_short_window_not_the_whole_output(tokenizer):
    calls: list[int] = []
    decode = tokenizer.decode

    def counting(ids: list[int]) -> str:
        calls.append(len(ids))
        return decode(ids)

    tokenizer.decode = counting                        # type: ignore[method-assign]
    try:
        ids = tokenizer.encode(" ".join(TEXTS * 12), add_special_tokens=False)
        assert len(ids) > 150
        text = "".join(stream(tokenizer, tokenizer.encode("x"), ids))
    finally:
        del tokenizer.decode
    assert text == expected(tokenizer, tokenizer.encode("x"), ids)
    assert max(calls) <= 16, max(calls)                # O(window) per step, not O(output)


def test_special_tokens_and_chat_template_come_from_tokenizer_config(tmp_path: Path):
    tok = load_tokenizer(FAMILIES["metaspace"](tmp_path))
    assert tok is not None and tok.chat_template and "bos_token" in tok.chat_template
    assert tok.bos_token_id == tok._tok.token_to_id("<s>")
    assert tok.eos_token_id == tok._tok.token_to_id("</s>")   # {"content": ...} form
    assert tok.encode("Hi")[0] == tok.bos_token_id
    assert tok.bos_token_id not in tok.encode("Hi", add_special_tokens=False)
