"""Griffe extension: keras-cam's docstrings as the reference should show them.

- keras-cam's docstrings (Google style, as Keras writes them) head their usage
  block ``Example:``. Griffe's Google parser knows only the plural,
  ``Examples:``; it would render the singular as a note, with the ``>>>``
  lines as prose. The heading is renamed before the docstring is parsed, so
  those lines are shown as highlighted code.
- Sphinx roles (``:func:`name` ``, ``:class:`~keras_cam.X` ``) would show
  their role markup; they become plain code spans.
"""

from __future__ import annotations

import re

import griffe

_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):`~?([^`]+)`")


class DocstringMarkup(griffe.Extension):
    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            text = _HEADING.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(r"``\1``", text)
