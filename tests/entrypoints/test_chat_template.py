"""Chat templates render exactly as transformers renders them (transformers is the reference)."""

from __future__ import annotations

import pytest

from actorexec.entrypoints.openai.chat_template import ChatTemplateError, render_chat
from tests.actors.engine.tokenizer_files import byte_level_bpe

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Uses what transformers adds to Jinja: tojson (non-ASCII kept), raise_exception, loop
# controls, the {% generation %} block, whitespace control, special tokens.
FEATURES = """{{ bos_token }}
{% for m in messages %}
  {% if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}
  {% if loop.index > 3 %}{% break %}{% endif %}
  {% if m['role'] == 'assistant' %}{% generation %}[A] {{ m['content'] }}{{ eos_token }}
  {% endgeneration %}
  {% else %}[{{ m['role'] | upper }}] {{ m['content'] | tojson }}
  {% endif %}
{% endfor %}
{% if add_generation_prompt %}[A]{% endif %}"""
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo ✓"},
            {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Again"}]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    transformers = pytest.importorskip("transformers")
    directory = byte_level_bpe(tmp_path_factory.mktemp("tok"))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(directory / "tokenizer.json"), bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("template", [CHATML, FEATURES], ids=["chatml", "features"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_matches_transformers(reference, template, add_generation_prompt):
    expected = reference.apply_chat_template(MESSAGES, chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    ours = render_chat(template, MESSAGES, {"bos_token": "<s>", "eos_token": "</s>"},
                       add_generation_prompt)
    assert ours == expected


def test_content_parts_become_text_and_other_parts_are_refused():
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"},
                                          {"type": "text", "text": "b"}]}]
    assert render_chat(CHATML, parts, {}) == "<|im_start|>user\nab<|im_end|>\n" \
        "<|im_start|>assistant\n"
    with pytest.raises(ChatTemplateError, match="only text parts"):
        render_chat(CHATML, [{"role": "user", "content": [{"type": "image_url"}]}], {})


@pytest.mark.parametrize("template, messages, message", [
    (None, MESSAGES, "this model has no chat template"),
    (CHATML, [], "at least one message"),
    (CHATML, [{"role": "robot", "content": "x"}], "role must be one of"),
    (FEATURES, [{"role": "tool", "content": "x"}], "rejected the messages: no tools here"),
    ("{% for %}", MESSAGES, "does not compile"),
])
def test_what_cannot_be_rendered_is_a_clear_error(template, messages, message):
    with pytest.raises(ChatTemplateError, match=message):
        render_chat(template, messages, {"bos_token": "<s>", "eos_token": "</s>"})


def test_the_sandbox_refuses_unsafe_templates():
    with pytest.raises(ChatTemplateError, match="is unsafe"):
        render_chat("{{ messages.__class__.__mro__ }}", MESSAGES, {})
