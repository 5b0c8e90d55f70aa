"""Real ``tokenizer.json`` files, trained here with the ``tokenizers`` library (no download).

Three families that detokenize differently:
- byte-level BPE (GPT-2 / Llama-3 / Qwen): a token may hold part of a UTF-8 character;
- Metaspace (SentencePiece-style): the decoder drops the leading space of the first token;
- Llama-2-style: Metaspace pieces plus byte-fallback tokens (``<0xE2>``) for rare characters.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

CORPUS = ["Hello world, this is a small test of the tokenizer.",
          "the quick brown fox jumps over the lazy dog",
          "héllo wörld ✓ 日本語 naïve café"] * 20
SPECIALS = ["<unk>", "<s>", "</s>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
                 "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


def _write(tok: Tokenizer, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": CHAT_TEMPLATE}))
    return directory


def byte_level_bpe(directory: Path) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return _write(tok, directory)


def metaspace(directory: Path) -> Path:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=SPECIALS))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return _write(tok, directory)


def llama2_style(directory: Path) -> Path:
    """Metaspace pieces learnt from ASCII text; every other character falls back to bytes."""
    ascii_only = [t.encode("ascii", "ignore").decode() for t in CORPUS]
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.Metaspace()
    base.train_from_iterator(ascii_only, trainers.BpeTrainer(vocab_size=150,
                                                             special_tokens=SPECIALS))
    model = json.loads(base.to_str())["model"]
    vocab = dict(model["vocab"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.add_special_tokens(SPECIALS)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return _write(tok, directory)


FAMILIES = {"byte_level_bpe": byte_level_bpe, "metaspace": metaspace, "llama2_style": llama2_style}
