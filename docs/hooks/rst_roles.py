"""MkDocs hook: the reStructuredText roles of the docstrings (:func:`name`, :class:`~a.b.C`,
:mod:`.x`, :data:, :meth:, :attr:) as code, linked to the reference page of the object where
mkdocs-autorefs finds it (an ``optional`` autoref: an unknown name stays plain code, no warning).

A name is looked up as written when it starts with ``stablebptt``; otherwise relative to the
object whose documentation it appears in (the nearest ``id="stablebptt…"`` above it): a
leading dot means its module (``.engine.f`` in ``stablebptt.core`` is
``stablebptt.core.engine.f``), a bare name is tried in that object's module, then in its
package. ``~`` shows only the last component."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:func|class|mod|data|meth|attr|exc|obj):<code>(~?)([\w.]+)(\(\))?</code>")
ANCHOR = re.compile(r'id="(stablebptt(?:\.\w+)*)"')


def _guesses(name: str, context: str | None) -> list[str]:
    if name.startswith("stablebptt"):
        return [name]
    if context is None:
        return []
    parts = context.split(".")
    if name.startswith("."):  # relative to the module: drop the leading dots, try from the context outward
        name = name.lstrip(".")
    return [".".join(parts[:k] + [name]) for k in range(len(parts), 0, -1)][:2]


def on_page_content(html: str, page, **kwargs) -> str:
    anchors = [(m.start(), m.group(1)) for m in ANCHOR.finditer(html)]

    def context_at(pos: int) -> str | None:
        best = None
        for start, ident in anchors:
            if start > pos:
                break
            best = ident
        return best

    def repl(m: re.Match) -> str:
        tilde, name, call = m.group(1), m.group(2), m.group(3) or ""
        shown = (name.rsplit(".", 1)[-1] if tilde else name.lstrip(".")) + call
        guesses = _guesses(name, context_at(m.start()))
        if not guesses:
            return f"<code>{shown}</code>"
        slug = f' slug="{guesses[1]}"' if len(guesses) > 1 else ""
        return f'<autoref identifier="{guesses[0]}"{slug} optional><code>{shown}</code></autoref>'

    return ROLE.sub(repl, html)
