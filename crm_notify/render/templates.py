"""Email templates on disk: one folder per template, optional per-language variant folders.

::

    templates/
      _layouts/base.html              folders starting with "_" are shared, not templates
      order_shipped/subject.txt       the default variant (``default_language``)
      order_shipped/body.html         body.html and/or body.txt
      order_shipped/body.txt
      order_shipped/de/subject.txt    a variant: used as a whole for "de", "de-AT", "de_AT"
      order_shipped/de/body.html

Template names resolve against ``templates/``, so ``{% extends "_layouts/base.html" %}`` works.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, meta

from crm_notify.errors import RenderError, TemplateNotFoundError
from crm_notify.render.sandbox import BoundedSandboxEnvironment, SandboxLimits

#: The parts of a message, as file names inside a variant folder.
SUBJECT, HTML_BODY, TEXT_BODY = "subject.txt", "body.html", "body.txt"

_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    """A rendered email, before MIME encoding.

    Parameters:
        template: the template name.
        language: the variant used: a language folder such as ``"de"``, or the default language.
        subject: one line, whitespace collapsed.
        html: the HTML body, if the variant has ``body.html``.
        text: the plain-text body, if the variant has ``body.txt``.
    """

    template: str
    language: str
    subject: str
    html: str | None
    text: str | None


class TemplateStore:
    """Load, lint and render the templates under ``templates_dir``.

    Parameters:
        templates_dir: the folder holding one sub-folder per template.
        default_language: the language of the top-level (default) variant.
        limits: sandbox bounds applied to each part's render.
    """

    def __init__(
        self,
        templates_dir: Path,
        *,
        default_language: str = "en",
        limits: SandboxLimits | None = None,
    ) -> None:
        self.templates_dir = Path(templates_dir)
        self.default_language = default_language
        self._loader = FileSystemLoader(self.templates_dir)
        self.environment = BoundedSandboxEnvironment(limits, loader=self._loader, auto_reload=True)

    def names(self) -> list[str]:
        """Return the names of all templates, sorted."""
        if not self.templates_dir.is_dir():
            return []
        return sorted(p.name for p in self.templates_dir.iterdir() if self.exists(p.name))

    def exists(self, name: str) -> bool:
        """Return whether ``name`` is a template (has a subject in some variant)."""
        return bool(_TEMPLATE_NAME.fullmatch(name)) and bool(self._variants(name))

    def languages(self, name: str) -> list[str]:
        """Return the variants of ``name``: the default language (if present) and its folders.

        Raises:
            TemplateNotFoundError: no such template.
        """
        variants = self._require(name)
        return [self.default_language if folder is None else folder for folder in variants]

    def render(
        self, name: str, context: Mapping[str, Any], *, language: str | None = None
    ) -> RenderedMessage:
        """Render every part of one variant of ``name``.

        Parameters:
            name: the template.
            context: plain data for the templates.
            language: the contact's language (``"de-AT"``, ``"de_AT"``, ``"de"``); falls back
                to its primary language, then to the default variant.

        Raises:
            TemplateNotFoundError: no such template, no usable variant, or a variant without body.
            SandboxLimitError: a part exceeded a sandbox bound.
            RenderError: a part failed to render (message starts with ``file:line``).

        Returns:
            The :class:`RenderedMessage`.
        """
        folder = self._choose(name, language)
        prefix = self._prefix(name, folder)
        names = self._parts(prefix)
        texts = self.environment.render_all([prefix + part for part in names], context)
        parts = dict(zip(names, texts, strict=True))
        if HTML_BODY not in parts and TEXT_BODY not in parts:
            raise TemplateNotFoundError(
                f"template {name!r} has neither {HTML_BODY} nor {TEXT_BODY} in "
                f"{self.templates_dir / prefix}"
            )
        return RenderedMessage(
            template=name,
            language=self.default_language if folder is None else folder,
            subject=" ".join(parts[SUBJECT].split()),
            html=parts.get(HTML_BODY),
            text=parts.get(TEXT_BODY),
        )

    def lint(self, name: str) -> list[str]:
        """Compile every part of every variant of ``name`` and the templates they use.

        Raises:
            TemplateNotFoundError: no such template.

        Returns:
            Problems as ``"file:line: message"`` strings; empty when the template is fine.
        """
        problems: list[str] = []
        checked: set[str] = set()
        for folder in self._require(name):
            prefix = self._prefix(name, folder)
            parts = self._parts(prefix)
            if HTML_BODY not in parts and TEXT_BODY not in parts:
                problems.append(f"{prefix}: has neither {HTML_BODY} nor {TEXT_BODY}")
            for part in parts:
                self._lint_file(prefix + part, problems, checked)
        return problems

    def _lint_file(self, path: str, problems: list[str], checked: set[str]) -> None:
        if path in checked:
            return
        checked.add(path)
        try:
            self.environment.get_template(path)
            source = self._loader.get_source(self.environment, path)[0]
            used = meta.find_referenced_templates(self.environment.parse(source))
        except RenderError as exc:
            problems.append(str(exc))
            return
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot be read: {exc}")
            return
        for other in used:
            if other is None:
                continue
            if (self.templates_dir / other).is_file():
                self._lint_file(other, problems, checked)
            else:
                problems.append(f"{path}: uses missing template {other!r}")

    def _parts(self, prefix: str) -> list[str]:
        folder = self.templates_dir / prefix
        return [part for part in (SUBJECT, HTML_BODY, TEXT_BODY) if (folder / part).is_file()]

    @staticmethod
    def _prefix(name: str, folder: str | None) -> str:
        return f"{name}/" if folder is None else f"{name}/{folder}/"

    def _variants(self, name: str) -> list[str | None]:
        """Variant folders of ``name`` that have a subject; ``None`` is the default variant."""
        root = self.templates_dir / name
        if name.startswith("_") or not root.is_dir():
            return []
        found: list[str | None] = [None] if (root / SUBJECT).is_file() else []
        found += sorted(
            p.name
            for p in root.iterdir()
            if _LANGUAGE_TAG.fullmatch(p.name) and (p / SUBJECT).is_file()
        )
        return found

    def _require(self, name: str) -> list[str | None]:
        variants = self._variants(name) if _TEMPLATE_NAME.fullmatch(name) else []
        if not variants:
            raise TemplateNotFoundError(
                f"no template {name!r} (no {SUBJECT} in {self.templates_dir / name} "
                "or its language folders)"
            )
        return variants

    def _choose(self, name: str, language: str | None) -> str | None:
        """Pick the most specific variant with a subject for ``language``."""
        variants = self._require(name)
        by_tag = {_normal(v): v for v in variants if v is not None}
        if language and _LANGUAGE_TAG.fullmatch(language):
            pieces = _normal(language).split("-")
            for size in range(len(pieces), 0, -1):
                folder = by_tag.get("-".join(pieces[:size]))
                if folder is not None:
                    return folder
        if None in variants:
            return None
        raise TemplateNotFoundError(
            f"template {name!r} has no variant for language {language!r} and no default "
            f"variant ({SUBJECT} in {self.templates_dir / name})"
        )


def _normal(tag: str) -> str:
    return tag.replace("_", "-").lower()
