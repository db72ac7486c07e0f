"""Profile rendering on top of the node's one strict renderer (``app.runtime.templates``).

Two things are rendered: template files (``templates/<source>``, written under
the component dir) and every string field of a profile (image, command, env,
health URLs...). What is profile-specific lives here:

* the known names are the profile's *declared* variables plus the built-ins (typed
  values: ints, bools, lists, as ``variables.py`` resolved them), so a template that
  uses a name the profile does not declare fails, with a hint to declare it;
* template files come from the profile's ``templates/`` directory (and may include
  each other); nested fields are rendered with their path as the label
  (``components.a.command[1]``).

Sandboxing, strictness, the compile cache and the error shape (``InvalidArgument``
naming the template or field and the variable, phase ``render``) are the core's.
One :class:`Renderer` per loaded profile keeps its compile cache warm across passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2

from app.runtime.templates import TemplateEngine

PHASE = "render"
_HINT = "; declare it under 'variables'"


class Renderer:
    """Renders strings and template files with one declared set of names."""

    def __init__(self, templates_dir: Path | None, allowed_names: Iterable[str]) -> None:
        loader = jinja2.FileSystemLoader(str(templates_dir)) if templates_dir else None
        self.engine = TemplateEngine(phase=PHASE, loader=loader, trim_blocks=True, lstrip_blocks=True)
        self.allowed = frozenset(allowed_names)

    def render_string(self, source: str, context: Mapping[str, Any], *, where: str) -> str:
        return self.engine.render(source, context, where, known=self.allowed, hint=_HINT)

    def render_file(self, name: str, context: Mapping[str, Any], *, inline: str | None = None) -> str:
        where = f"template {name}"
        if inline is None:
            inline = self._source(name, where)
        compiled = self.engine.compile(inline, where)  # even a file without tags: it is a template
        self.engine.check_names(compiled, self.allowed, where, _HINT)
        return self.engine.run(compiled, context, where)

    def _source(self, name: str, where: str) -> str:
        loader = self.engine.env.loader
        if loader is None:
            raise self.engine.error(where, "the profile has no templates directory")
        try:
            source, _, _ = loader.get_source(self.engine.env, name)
        except jinja2.TemplateNotFound:
            raise self.engine.error(where, "no such template in the profile") from None
        return str(source)

    def render_tree(self, value: Any, context: Mapping[str, Any], *, where: str) -> Any:
        """Render every string inside nested dicts/lists; errors name the field path."""
        if isinstance(value, str):
            return self.render_string(value, context, where=where)
        if isinstance(value, list):
            return [self.render_tree(v, context, where=f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.render_tree(v, context, where=f"{where}.{k}") for k, v in value.items()}
        return value
