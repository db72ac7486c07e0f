"""Strict Jinja2 rendering for profiles: undefined names fail and are named.

Two things are rendered: template files (``templates/<source>``, written under
the component dir) and every string field of a profile (image, command, env,
health URLs...). Both go through :class:`Renderer`, which

* refuses names a profile did not declare (checked statically with
  ``jinja2.meta`` before rendering, so a branch not taken today cannot hide a
  typo that breaks tomorrow), and
* turns every Jinja2 failure into :class:`InvalidArgument` naming the template
  (or field) and the variable.

Compiled templates are cached per source text: a no-op reconcile pass re-renders
everything and must stay cheap.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox
import yaml

from app.errors import InvalidArgument


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()


def _b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


class Renderer:
    """Renders strings and template files with one declared set of names."""

    def __init__(self, templates_dir: Path | None, allowed_names: Iterable[str]) -> None:
        loader = jinja2.FileSystemLoader(str(templates_dir)) if templates_dir else None
        # Sandboxed like app/runtime/templates.py: profiles may come from operators and agents.
        self.env = jinja2.sandbox.SandboxedEnvironment(
            loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
            autoescape=False, trim_blocks=True, lstrip_blocks=True,
        )
        self.env.filters["to_yaml"] = _to_yaml
        self.env.filters["to_json"] = json.dumps
        self.env.filters["b64encode"] = _b64
        self.allowed = frozenset(allowed_names) | frozenset(self.env.globals)
        self._cache: dict[str, jinja2.Template] = {}

    def _compile(self, source: str, where: str, *, name: str | None = None) -> jinja2.Template:
        key = f"{name}\0{source}"
        tpl = self._cache.get(key)
        if tpl is not None:
            return tpl
        try:
            ast = self.env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise InvalidArgument(f"{where}: template syntax error line {exc.lineno}: {exc.message}",
                                  phase="render", details={"template": where}) from exc
        unknown = sorted(jinja2.meta.find_undeclared_variables(ast) - self.allowed)
        if unknown:
            raise InvalidArgument(
                f"{where}: uses undeclared variable(s) {', '.join(unknown)}; declare them under 'variables'",
                phase="render", details={"template": where, "variables": unknown})
        tpl = self.env.from_string(source)
        self._cache[key] = tpl
        return tpl

    def _run(self, tpl: jinja2.Template, where: str, context: Mapping[str, Any]) -> str:
        try:
            return tpl.render(context)
        except jinja2.UndefinedError as exc:
            raise InvalidArgument(f"{where}: {exc.message}", phase="render",
                                  details={"template": where, "error": exc.message}) from exc
        except jinja2.TemplateError as exc:
            raise InvalidArgument(f"{where}: {exc}", phase="render", details={"template": where}) from exc
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise InvalidArgument(f"{where}: {type(exc).__name__}: {exc}", phase="render",
                                  details={"template": where}) from exc

    def render_string(self, source: str, context: Mapping[str, Any], *, where: str) -> str:
        if "{" not in source:  # fast path: most fields are plain text
            return source
        return self._run(self._compile(source, where), where, context)

    def render_file(self, name: str, context: Mapping[str, Any], *, inline: str | None = None) -> str:
        where = f"template {name}"
        if inline is not None:
            return self._run(self._compile(inline, where, name=name), where, context)
        if self.env.loader is None:
            raise InvalidArgument(f"{where}: the profile has no templates directory", phase="render")
        try:
            source, _, _ = self.env.loader.get_source(self.env, name)
        except jinja2.TemplateNotFound as exc:
            raise InvalidArgument(f"{where}: no such template in the profile", phase="render",
                                  details={"template": name}) from exc
        return self._run(self._compile(source, where, name=name), where, context)

    def render_tree(self, value: Any, context: Mapping[str, Any], *, where: str) -> Any:
        """Render every string inside nested dicts/lists; errors name the field path."""
        if isinstance(value, str):
            return self.render_string(value, context, where=where)
        if isinstance(value, list):
            return [self.render_tree(v, context, where=f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.render_tree(v, context, where=f"{where}.{k}") for k, v in value.items()}
        return value
