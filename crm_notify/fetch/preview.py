"""Preview of fetch steps: the request each would make, and the data a preview renders with.

A preview makes no request (it is a dry run: nothing is called, stored or cached). Each step's
URL is rendered as a send would render it, with ``${NAME}`` values shown as ``***``; the email
is rendered with the step's fallback data, or an empty mapping when it has none.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crm_notify.errors import RenderError
from crm_notify.fetch.model import FetchStep

#: What a masked credential is shown as.
MASK = "***"


class _Masked(Mapping[str, str]):
    """An environment in which every variable is set to :data:`MASK`."""

    def __getitem__(self, name: str) -> str:
        return MASK

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass(frozen=True)
class FetchPreview:
    """One fetch step as a preview shows it: the request it would make (``url`` with
    credentials masked; empty, with ``error`` set, when it would not render), and ``uses``:
    what the preview rendered with instead of an answer."""

    name: str
    method: str
    url: str
    uses: str
    error: str | None = None


def preview_fetches(
    steps: Sequence[FetchStep], context: Mapping[str, Any]
) -> tuple[tuple[FetchPreview, ...], dict[str, Any]]:
    """The requests ``steps`` would make for ``context``, and the data to render with.

    Returns:
        One preview per step, and each step's fallback (or ``{}``) by name.
    """
    previews = []
    data: dict[str, Any] = {}
    for step in steps:
        if step.fallback is not None:
            uses = "its fallback data (no request is made in a preview)"
            data[step.name] = step.fallback
        else:
            uses = "an empty mapping: it has no fallback (no request is made in a preview)"
            data[step.name] = {}
        try:
            url, error = step.url.render(context, _Masked()), None
        except RenderError as exc:
            url, error = step.url.target, f"the URL does not render: {exc}"
        previews.append(FetchPreview(step.name, step.method, url, uses, error))
    return tuple(previews), data
