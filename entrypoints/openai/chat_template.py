"""Chat templates rendered as transformers renders them (jinja2, sandboxed).

The same environment options and helpers as transformers' ``apply_chat_template``:
``trim_blocks``/``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson``
filter that keeps non-ASCII text, ``raise_exception`` and ``strftime_now``
globals, and the ``{% generation %}`` block (rendered as its body), with the
tokenizer's special tokens (``bos_token``, ``eos_token``, ...) as variables.
Jinja2 earns its place: chat templates are Jinja programs shipped with models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLES = ("system", "user", "assistant", "tool", "developer")


class ChatTemplateError(ValueError):
    """The messages cannot be rendered (no template, bad messages, or the template refused)."""


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (marks assistant text for training masks)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@lru_cache(maxsize=8)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from None


def normalise_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Checks roles and turns content-part lists into plain text (text parts only)."""
    if not messages:
        raise ChatTemplateError("`messages` must contain at least one message")
    out = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise ChatTemplateError(f"messages[{i}].role must be one of {', '.join(ROLES)}, "
                                    f"got {role!r}")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" \
                        or not isinstance(part.get("text"), str):
                    raise ChatTemplateError(f"messages[{i}].content: only text parts are "
                                            "supported by this server")
                texts.append(part["text"])
            content = "".join(texts)
        elif content is not None and not isinstance(content, str):
            raise ChatTemplateError(f"messages[{i}].content must be a string or a list of "
                                    "text parts")
        out.append({**message, "content": content if content is not None else ""})
    return out


def render_chat(template: str | None, messages: Sequence[Mapping[str, Any]],
                special_tokens: Mapping[str, str], add_generation_prompt: bool = True,
                extra: Mapping[str, Any] | None = None) -> str:
    """The prompt text for ``messages``; ``ChatTemplateError`` if it cannot be made."""
    if template is None:
        raise ChatTemplateError("this model has no chat template (tokenizer_config.json has no "
                                "`chat_template`): use /v1/completions with a prompt instead")
    compiled = compile_template(template)
    variables = {**(extra or {}), **special_tokens, "messages": normalise_messages(messages),
                 "add_generation_prompt": add_generation_prompt}
    try:
        return compiled.render(**variables)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template rejected the messages: {exc}") from None
