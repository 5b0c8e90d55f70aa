"""Byte tokenizer round trips and streams whole characters; the default model is HF-loadable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from actorexec.actors.engine.default_model import CONFIG, ensure_default_model
from actorexec.actors.engine.tokenizer import ByteTokenizer, load_tokenizer


def test_byte_tokenizer_round_trips_any_text_with_bos():
    tok = ByteTokenizer()
    ids = tok.encode("héllo ✓")
    assert ids[0] == tok.bos_token_id and all(3 <= t < 259 for t in ids[1:])
    assert tok.decode(ids) == "héllo ✓"


def test_detokenizer_holds_a_split_character_until_it_is_whole():
    tok = ByteTokenizer(add_bos=False)
    ids = tok.encode("a✓b")            # ✓ is three bytes
    detok = tok.detokenizer()
    pieces = [detok.step([t]) for t in ids]
    assert pieces == ["a", "", "", "✓", "b"]
    assert detok.step([tok.eos_token_id]) == ""


def test_default_model_is_made_once_in_hf_format_with_its_tokenizer(tmp_path):
    path = ensure_default_model(tmp_path / "m")
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_model(tmp_path / "m") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    assert json.loads((path / "config.json").read_text())["vocab_size"] == CONFIG["vocab_size"]
    tok = load_tokenizer(path)
    assert isinstance(tok, ByteTokenizer) and tok.eos_token_id == CONFIG["eos_token_id"]


def test_default_model_loads_in_transformers(tmp_path):
    import torch
    import transformers

    path = ensure_default_model(tmp_path / "m")
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ByteTokenizer().encode("The")])).logits
    assert logits.shape == (1, 4, CONFIG["vocab_size"]) and torch.isfinite(logits).all()


def test_an_hf_tokenizer_json_is_used(tmp_path):
    import tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path, eos_token_id=0)
    assert loaded is not None and loaded.encode("hello world") == [1, 2]
    detok = loaded.detokenizer()
    assert detok.step([1]) + detok.step([2]) == loaded.decode([1, 2])


# The demo's environment has torch but no numpy; these run there as subprocesses.
NO_NUMPY = "import sys; sys.modules['numpy'] = None  # as if numpy were not installed\n"


def run_without_numpy(code: str, tmp_path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
           "ACTOREXEC_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-c", NO_NUMPY + code], capture_output=True,
                          text=True, timeout=120, env=env)


def test_random_weights_fallback_needs_no_numpy(tmp_path):
    import torch
    from safetensors.torch import load_file

    from actorexec.actors.engine.default_model import _weights

    result = run_without_numpy(
        "from pathlib import Path\n"
        "import actorexec.actors.engine.default_model as dm\n"
        "dm.DATA_DIR = Path('/nonexistent')        # the shipped weights are missing\n"
        f"dm.ensure_default_model({str(tmp_path / 'random')!r})\n", tmp_path)
    assert result.returncode == 0, result.stderr
    written = load_file(str(tmp_path / "random" / "model.safetensors"))
    reference = _weights()
    assert written.keys() == reference.keys()
    assert all(torch.equal(written[k], reference[k]) for k in reference)


def test_the_demo_prints_no_numpy_warning_without_numpy(tmp_path):
    result = run_without_numpy(
        "from actorexec.entrypoints.cli import main\n"
        "main(['generate', '--lines', '--max-tokens', '2', 'Hi'])\n", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[0] 'Hi" not in result.stderr and "NumPy" not in result.stderr, result.stderr


def test_the_default_model_has_a_chat_template_and_259_real_tokens(tmp_path):
    path = ensure_default_model(tmp_path / "m")
    tok = load_tokenizer(path)
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 3 + 256 == 259
    assert tok.chat_template and tok.special_tokens["bos_token"] == "<s>"
    # The template's "<s>" text is the BOS token, as HF tokenizers treat added tokens.
    assert tok.encode("<s>Hi", add_special_tokens=False) == [tok.bos_token_id, 75, 108]
