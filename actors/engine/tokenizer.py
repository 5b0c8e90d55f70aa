"""Tokenizers the engine can use without transformers.

``ByteTokenizer`` is ours: token = byte + 3, with pad/bos/eos as 0/1/2. It is
what the default model uses and is described by ``actorexec_tokenizer.json``
in the model directory. A directory with an HF ``tokenizer.json`` is read
with the ``tokenizers`` package when that is installed (it is optional).
Streams decode incrementally through a ``Detokenizer``, so a multi-byte
character split across tokens is printed once it is whole.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Protocol

BYTE_TOKENIZER_FILE = "actorexec_tokenizer.json"


class Detokenizer(Protocol):
    def step(self, token_ids: list[int]) -> str:
        """Text completed by these new tokens."""
        ...


class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    def detokenizer(self) -> Detokenizer: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: no vocabulary file, no download, any text round-trips."""

    def __init__(self, offset: int = 3, pad_token_id: int = 0, bos_token_id: int = 1,
                 eos_token_id: int = 2, add_bos: bool = True) -> None:
        self.offset = offset
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.add_bos = add_bos
        self.vocab_size = offset + 256

    def encode(self, text: str) -> list[int]:
        ids = [b + self.offset for b in text.encode("utf-8")]
        return [self.bos_token_id, *ids] if self.add_bos else ids

    def _bytes(self, token_ids: list[int]) -> bytes:
        # Special tokens (and ids past the byte range) carry no text.
        return bytes(t - self.offset for t in token_ids if self.offset <= t < self.vocab_size)

    def decode(self, token_ids: list[int]) -> str:
        return self._bytes(token_ids).decode("utf-8", errors="replace")

    def detokenizer(self) -> Detokenizer:
        return _ByteDetokenizer(self)

    def to_json(self) -> dict[str, int | str | bool]:
        return {"type": "byte", "offset": self.offset, "pad_token_id": self.pad_token_id,
                "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
                "add_bos": self.add_bos}

    def save(self, directory: Path | str) -> None:
        (Path(directory) / BYTE_TOKENIZER_FILE).write_text(json.dumps(self.to_json(), indent=2))


class _ByteDetokenizer:
    def __init__(self, tokenizer: ByteTokenizer) -> None:
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_ids: list[int]) -> str:
        return self._utf8.decode(self._tok._bytes(token_ids))


class HFTokenizer:
    """An HF ``tokenizer.json`` through the optional ``tokenizers`` package."""

    def __init__(self, path: Path, bos_token_id: int | None, eos_token_id: int | None) -> None:
        from tokenizers import Tokenizer as _Tok

        self._tok = _Tok.from_file(str(path))
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, token_ids: list[int]) -> str:
        return self._tok.decode(token_ids)

    def detokenizer(self) -> Detokenizer:
        return _DiffDetokenizer(self)


class _DiffDetokenizer:
    """Decodes the whole output each step and yields the new suffix (O(n) per step, simple)."""

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._emitted = 0

    def step(self, token_ids: list[int]) -> str:
        self._ids += token_ids
        text = self._tok.decode(self._ids)
        if text.endswith("\ufffd"):      # an unfinished multi-byte character: wait for more
            return ""
        delta, self._emitted = text[self._emitted:], len(text)
        return delta


def load_tokenizer(directory: Path | str, bos_token_id: int | None = None,
                   eos_token_id: int | None = None) -> Tokenizer | None:
    """The tokenizer a model directory describes, or ``None`` (then prompts must be token ids)."""
    directory = Path(directory)
    ours = directory / BYTE_TOKENIZER_FILE
    if ours.is_file():
        spec = json.loads(ours.read_text())
        if spec.pop("type", None) != "byte":
            raise ValueError(f"{ours}: unknown tokenizer type")
        return ByteTokenizer(**spec)
    hf = directory / "tokenizer.json"
    if hf.is_file():
        try:
            return HFTokenizer(hf, bos_token_id, eos_token_id)
        except ImportError:
            return None
    return None
