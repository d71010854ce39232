"""TemplateStore: layout, language variants, strictness, linting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crm_notify.errors import RenderError, SandboxLimitError, TemplateNotFoundError
from crm_notify.render import SandboxLimits, TemplateStore

CONTEXT = {"order": {"id": 42}, "name": "<Zoë & Co>", "shop": "S&S"}


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def store(tmp_path: Path) -> TemplateStore:
    write(
        tmp_path,
        {
            "_layouts/base.html": "<main>{% block body %}{% endblock %}</main>{{ shop }}",
            "order_shipped/subject.txt": "  Order {{ order.id }}\n   has\tshipped \n",
            "order_shipped/body.html": (
                '{% extends "_layouts/base.html" %}{% block body %}Hi {{ name }}{% endblock %}'
            ),
            "order_shipped/body.txt": "Hi {{ name }}",
            "order_shipped/de/subject.txt": "Bestellung {{ order.id }}",
            "order_shipped/de/body.txt": "Hallo {{ name }}",
            "order_shipped/pt-BR/subject.txt": "Pedido {{ order.id }}",
            "order_shipped/pt-BR/body.txt": "Olá {{ name }}",
            "welcome/subject.txt": "Welcome",
            "welcome/body.txt": "Hello {{ name }}",
        },
    )
    return TemplateStore(tmp_path)


def test_renders_default_variant(store: TemplateStore) -> None:
    # Given a template with subject, HTML (extending a layout) and text parts
    # When it is rendered without a language
    message = store.render("order_shipped", CONTEXT)

    # Then every part is rendered from the default variant
    assert message.template == "order_shipped"
    assert message.language == "en"
    assert message.subject == "Order 42 has shipped"
    assert message.html == "<main>Hi &lt;Zoë &amp; Co&gt;</main>S&amp;S"
    assert message.text == "Hi <Zoë & Co>"


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("de-AT", "de"),
        ("de_AT", "de"),
        ("DE", "de"),
        ("de", "de"),
        ("pt_br", "pt-BR"),
        ("pt-PT", "en"),
        ("fr", "en"),
        ("en", "en"),
        (None, "en"),
        ("../../etc", "en"),
    ],
)
def test_language_falls_back_to_primary_then_default(
    store: TemplateStore, language: str | None, expected: str
) -> None:
    # Given variants "de" and "pt-BR" besides the default
    # When rendering for a contact language
    message = store.render("order_shipped", CONTEXT, language=language)

    # Then the most specific variant is used
    assert message.language == expected


def test_variant_is_used_as_a_whole(store: TemplateStore) -> None:
    # Given a "de" variant with a text body only (the default also has HTML)
    # When rendering in German
    message = store.render("order_shipped", CONTEXT, language="de-AT")

    # Then no part is borrowed from the default variant
    assert message.subject == "Bestellung 42"
    assert message.text == "Hallo <Zoë & Co>"
    assert message.html is None


def test_lists_templates_and_languages(store: TemplateStore) -> None:
    # Given templates plus a shared "_layouts" folder
    # When listing
    # Then only templates and their variants are reported
    assert store.names() == ["order_shipped", "welcome"]
    assert store.languages("order_shipped") == ["en", "de", "pt-BR"]
    assert store.exists("welcome")
    assert not store.exists("_layouts")
    assert not store.exists("missing")


@pytest.mark.parametrize("name", ["missing", "_layouts", "../order_shipped", ""])
def test_missing_template_names_template_and_folder(
    store: TemplateStore, tmp_path: Path, name: str
) -> None:
    # Given a name that is not a template
    # When it is rendered
    with pytest.raises(TemplateNotFoundError) as info:
        store.render(name, CONTEXT)

    # Then the error names it and the folder searched
    assert repr(name) in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_variant_without_body_is_not_found(tmp_path: Path) -> None:
    # Given a template with a subject only
    write(tmp_path, {"bare/subject.txt": "Hi"})
    store = TemplateStore(tmp_path)

    # When it is rendered or linted
    # Then rendering fails and lint reports it
    with pytest.raises(TemplateNotFoundError, match=r"neither body\.html nor body\.txt"):
        store.render("bare", {})
    assert store.lint("bare") == ["bare/: has neither body.html nor body.txt"]


def test_undefined_variable_names_variable_file_and_line(store: TemplateStore) -> None:
    # Given a context without "name"
    context = {"order": {"id": 1}, "shop": "S"}

    # When the template is rendered
    with pytest.raises(RenderError) as info:
        store.render("welcome", context)

    # Then the error names the variable, file and line instead of rendering a blank
    assert str(info.value) == "welcome/body.txt:1: 'name' is undefined"


def test_sandbox_limits_apply(tmp_path: Path) -> None:
    # Given a store with a small output limit and a template exceeding it
    write(tmp_path, {"big/subject.txt": "Hi", "big/body.txt": "{{ 'x' * 100 }}"})
    store = TemplateStore(tmp_path, limits=SandboxLimits(max_output_chars=50))

    # When it is rendered
    # Then the limit error names the part
    with pytest.raises(SandboxLimitError, match=r"big/body\.txt"):
        store.render("big", {})


def test_lint_reports_file_and_line(store: TemplateStore, tmp_path: Path) -> None:
    # Given a syntax error on line 3 of the German body and a missing layout
    write(
        tmp_path,
        {
            "order_shipped/de/body.html": "<p>\n{{ name }}\n{% if %}\n",
            "welcome/body.html": '{% extends "_layouts/missing.html" %}',
        },
    )

    # When both templates are linted
    shipped = store.lint("order_shipped")
    welcome = store.lint("welcome")

    # Then each problem names its file and line
    assert len(shipped) == 1
    assert shipped[0].startswith("order_shipped/de/body.html:3: syntax error: ")
    assert welcome == ["welcome/body.html: uses missing template '_layouts/missing.html'"]


def test_lint_of_a_clean_template_is_empty(store: TemplateStore) -> None:
    # Given valid templates
    # When linted
    # Then no problems are reported
    assert store.lint("order_shipped") == []


def test_lint_of_missing_template_raises(store: TemplateStore) -> None:
    # Given no template called "missing"
    # When it is linted
    # Then TemplateNotFoundError is raised
    with pytest.raises(TemplateNotFoundError):
        store.lint("missing")


def test_edited_templates_are_reloaded(store: TemplateStore, tmp_path: Path) -> None:
    # Given a rendered (hence cached) template
    store.render("welcome", CONTEXT)

    # When its file changes on disk
    body = tmp_path / "welcome/body.txt"
    body.write_text("Bye {{ name }}", encoding="utf-8")
    stat = body.stat()
    os.utime(body, (stat.st_atime, stat.st_mtime + 10))

    # Then the next render uses the new text
    assert store.render("welcome", CONTEXT).text == "Bye <Zoë & Co>"
