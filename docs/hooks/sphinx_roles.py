"""A griffe extension for the API reference: Sphinx roles in docstrings shown as plain code.

visprune's docstrings name other objects the Sphinx way (``:func:`pool_text_query```,
``:mod:`~visprune.flops.paper```), which reads well in ``help()`` and in the source; Markdown would
print the role itself. This turns each role into inline code of its target, the last dotted part
only where the target starts with ``~`` (Sphinx's "short name" mark).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

#: ``:func:`target``` and the other Python-domain roles, optionally ``:py:``-prefixed.
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc):`(~?)([^`]+)`")


def as_code(match: re.Match) -> str:
    """The role's target as inline code (its last dotted part for a ``~`` target)."""
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring griffe loads (before it is parsed)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(as_code, obj.docstring.value)
