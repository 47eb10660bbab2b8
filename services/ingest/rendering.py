"""Template rendering: {{name}} placeholders filled with plain text. Nothing else runs.

A template is checked when it is stored (`check`), and a send is checked against it before it is
accepted (`render` raises INVALID_ARGUMENT for a missing variable), so a notification is never
stored half-rendered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from services.bounds import (
    MAX_ID_LEN,
    MAX_LOCALE_LEN,
    MAX_TEMPLATE_ID_LEN,
    check_id,
    check_length,
    quote,
)
from services.domain import TemplateRecord, TemplateText
from services.errors import InvalidArgument

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
_STRAY_BRACES = re.compile(r"\{\{|\}\}")
MAX_TEMPLATE_TEXT = 4096


def placeholders(text: str) -> list[str]:
    return _PLACEHOLDER.findall(text)


def _fields(text: TemplateText) -> list[tuple[str, str]]:
    fields = [("title", text.title), ("body", text.body), ("image_url", text.image_url)]
    for index, action in enumerate(text.actions):
        fields.append((f"actions[{index}].label", action.label))
        fields.append((f"actions[{index}].url", action.url))
    return fields


def check(template: TemplateRecord) -> None:
    """Raises InvalidArgument unless the template can be stored."""
    check_id(template.template_id, "template_id", MAX_TEMPLATE_ID_LEN)
    if not template.locales:
        raise InvalidArgument("a template needs text for at least one locale")
    if template.default_locale not in template.locales:
        raise InvalidArgument(
            f"default_locale {quote(template.default_locale)} has no text; add it to locales"
        )
    for locale, text in template.locales.items():
        check_length(locale, MAX_LOCALE_LEN, "a locale")
        for action in text.actions:
            check_length(action.action_id, MAX_ID_LEN, f"{locale}: an action id")
        for name, value in _fields(text):
            if len(value) > MAX_TEMPLATE_TEXT:
                raise InvalidArgument(f"{locale}: {name} is over {MAX_TEMPLATE_TEXT} characters")
            if _STRAY_BRACES.search(_PLACEHOLDER.sub("", value)):
                raise InvalidArgument(
                    f"{locale}: {name} has '{{{{' or '}}}}' outside a {{{{name}}}} placeholder"
                )


def pick_locale(template: TemplateRecord, requested: str) -> str:
    """The requested locale, else its language ("fr" for "fr-CA"), else the default."""
    if requested in template.locales:
        return requested
    language = requested.split("-")[0].split("_")[0]
    if language in template.locales:
        return language
    return template.default_locale


def render(template: TemplateRecord, variables: Mapping[str, str], locale: str) -> TemplateText:
    """The template's text in the best locale with every placeholder filled.

    Raises:
        InvalidArgument: a placeholder has no variable.
    """
    chosen = pick_locale(template, locale)
    text = template.locales[chosen]
    for name, value in _fields(text):
        for placeholder in placeholders(value):
            if placeholder not in variables:
                raise InvalidArgument(
                    f"template {quote(template.template_id)} v{template.version} ({chosen}) "
                    f"needs variable {quote(placeholder)} in {name}"
                )

    def fill(value: str) -> str:
        # One pass, values inserted verbatim: a value containing {{x}} is not expanded again.
        return _PLACEHOLDER.sub(lambda m: variables[m.group(1)], value)

    return TemplateText(
        title=fill(text.title),
        body=fill(text.body),
        image_url=fill(text.image_url),
        actions=tuple(
            type(action)(action.action_id, fill(action.label), fill(action.url))
            for action in text.actions
        ),
    )
