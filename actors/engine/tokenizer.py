"""Tokenizers the engine can use without transformers.

``ByteTokenizer`` is ours: token = byte + 3, with pad/bos/eos as 0/1/2. It is
what the default model uses and is described by ``actorexec_tokenizer.json``
in the model directory. A directory with an HF ``tokenizer.json`` is read
with the ``tokenizers`` package (a dependency), together with the special
tokens and chat template of its ``tokenizer_config.json``. Streams decode
incrementally (``detokenizer()``): a multi-byte character split across tokens
is printed once it is whole, and ``finish()`` flushes an unfinished tail.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .detokenizer import Detokenizer, IncrementalDetokenizer

BYTE_TOKENIZER_FILE = "actorexec_tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_id: int | None
    chat_template: str | None
    special_tokens: dict[str, str]       # name -> text, e.g. {"bos_token": "<s>"}: chat templates

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def detokenizer(self, prompt_token_ids: Sequence[int] = ()) -> Detokenizer: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: no vocabulary file, no download, any text round-trips.

    The special tokens have a text form (``<pad>``, ``<s>``, ``</s>``) that
    ``encode`` recognises, as HF tokenizers do for their added tokens, so a
    chat template can write ``{{ bos_token }}``. ``decode`` drops them.
    """

    SPECIAL_TEXT = ("<pad>", "<s>", "</s>")

    def __init__(self, offset: int = 3, pad_token_id: int = 0, bos_token_id: int = 1,
                 eos_token_id: int = 2, add_bos: bool = True,
                 chat_template: str | None = None) -> None:
        self.offset = offset
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.add_bos = add_bos
        self.vocab_size = offset + 256
        self.chat_template = chat_template
        pad, bos, eos = self.SPECIAL_TEXT
        self.special_tokens = {"pad_token": pad, "bos_token": bos, "eos_token": eos}
        self._special_ids = {pad: pad_token_id, bos: bos_token_id, eos: eos_token_id}
        self._special_re = re.compile("|".join(re.escape(t) for t in self.SPECIAL_TEXT))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.bos_token_id] if add_special_tokens and self.add_bos else []
        pos = 0
        for match in self._special_re.finditer(text):
            ids += [b + self.offset for b in text[pos:match.start()].encode("utf-8")]
            ids.append(self._special_ids[match.group()])
            pos = match.end()
        ids += [b + self.offset for b in text[pos:].encode("utf-8")]
        return ids

    def token_bytes(self, token_ids: Sequence[int]) -> bytes:
        # Special tokens (and ids past the byte range) carry no text.
        return bytes(t - self.offset for t in token_ids if self.offset <= t < self.vocab_size)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.token_bytes(token_ids).decode("utf-8", errors="replace")

    def detokenizer(self, prompt_token_ids: Sequence[int] = ()) -> Detokenizer:
        return _ByteDetokenizer(self)

    def to_json(self) -> dict[str, int | str | bool]:
        return {"type": "byte", "offset": self.offset, "pad_token_id": self.pad_token_id,
                "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
                "add_bos": self.add_bos}

    def save(self, directory: Path | str) -> None:
        (Path(directory) / BYTE_TOKENIZER_FILE).write_text(json.dumps(self.to_json(), indent=2))


class _ByteDetokenizer:
    """Bytes straight into an incremental UTF-8 decoder: O(new tokens) per step."""

    def __init__(self, tokenizer: ByteTokenizer) -> None:
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_ids: Sequence[int]) -> str:
        return self._utf8.decode(self._tok.token_bytes(token_ids))

    def finish(self) -> str:
        return self._utf8.decode(b"", final=True)


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_chat_template(directory: Path, config: dict[str, Any]) -> str | None:
    """The default chat template, as transformers finds it (``chat_template.jinja`` first)."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):      # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


class HFTokenizer:
    """An HF ``tokenizer.json`` through the ``tokenizers`` package, plus its tokenizer_config."""

    def __init__(self, path: Path, bos_token_id: int | None = None,
                 eos_token_id: int | None = None) -> None:
        from tokenizers import Tokenizer as _Tok

        self._tok = _Tok.from_file(str(path))
        config_file = path.parent / TOKENIZER_CONFIG_FILE
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.special_tokens = {
            name: text for name in ("bos_token", "eos_token", "unk_token", "pad_token")
            if (text := _token_text(config.get(name))) is not None}
        self.bos_token_id = bos_token_id if bos_token_id is not None else self._id_of("bos_token")
        self.eos_token_id = eos_token_id if eos_token_id is not None else self._id_of("eos_token")
        self.chat_template = read_chat_template(path.parent, config)

    def _id_of(self, name: str) -> int | None:
        text = self.special_tokens.get(name)
        return None if text is None else self._tok.token_to_id(text)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._tok.decode(list(token_ids), skip_special_tokens=True)

    def detokenizer(self, prompt_token_ids: Sequence[int] = ()) -> Detokenizer:
        return IncrementalDetokenizer(self.decode, prompt_token_ids)


def load_tokenizer(directory: Path | str, bos_token_id: int | None = None,
                   eos_token_id: int | None = None) -> Tokenizer | None:
    """The tokenizer a model directory describes, or ``None`` (then prompts must be token ids)."""
    directory = Path(directory)
    ours = directory / BYTE_TOKENIZER_FILE
    if ours.is_file():
        spec = json.loads(ours.read_text())
        if spec.pop("type", None) != "byte":
            raise ValueError(f"{ours}: unknown tokenizer type")
        config_file = directory / TOKENIZER_CONFIG_FILE
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        return ByteTokenizer(**spec, chat_template=read_chat_template(directory, config))
    hf = directory / "tokenizer.json"
    if hf.is_file():
        return HFTokenizer(hf, bos_token_id, eos_token_id)
    return None
