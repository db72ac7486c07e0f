"""The one strict renderer (app.runtime.templates.TemplateEngine) and the profile layer on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.bootstrap.render import Renderer
from app.errors import Category, InvalidArgument
from app.runtime import templates
from app.runtime.templates import TemplateEngine


def test_typed_values_and_filters() -> None:
    eng = TemplateEngine()
    ctx = {"port": 2379, "tls": True, "peers": ["a", "b"], "cfg": {"k": 1}}
    out = eng.render("{{ port + 1 }} {{ 'on' if tls else 'off' }} {{ peers | join(',') }} {{ cfg | to_json }}", ctx)
    assert out == '2380 on a,b {"k": 1}'
    assert eng.render("{{ peers | to_yaml }} {{ 'x' | b64encode }}", ctx) == "[a, b] eA=="
    # Apps' templates get typed values too, through the same core.
    assert templates.render("n={{ n * 2 }}\n", {"n": 21}) == "n=42\n"


def test_errors_name_template_and_variable() -> None:
    eng = TemplateEngine(phase="p")
    with pytest.raises(InvalidArgument) as info:
        eng.render("{{ a }} {{ zz }} {{ yy }}", {"a": 1}, "t.j2")
    e = info.value
    assert e.message == "t.j2: undefined variable 'yy' (and 'zz')" and e.phase == "p"
    assert e.category is Category.CONFIG and e.details == {"template": "t.j2", "variables": ["yy", "zz"]}
    with pytest.raises(InvalidArgument, match=r"^t.j2: template syntax error on line 2: "):
        eng.render("ok\n{% if %}", {}, "t.j2")
    with pytest.raises(InvalidArgument, match=r"^t.j2: .*has no attribute 'nope'"):
        eng.render("{{ a.nope }}", {"a": 1}, "t.j2")
    with pytest.raises(InvalidArgument, match=r"^t.j2: ZeroDivisionError"):
        eng.render("{{ a / 0 }}", {"a": 1}, "t.j2")
    with pytest.raises(InvalidArgument, match=r"^t.j2: "):
        eng.render("{{ a.__class__.__mro__[1].__subclasses__() }}", {"a": 1}, "t.j2")  # sandboxed
    # A branch not taken still may not use an unknown name.
    with pytest.raises(InvalidArgument, match="undefined variable 'typo'"):
        eng.render("{% if false %}{{ typo }}{% endif %}", {}, "t.j2")


def test_compile_cache_keyed_by_source_and_bounded() -> None:
    eng = TemplateEngine(cache_size=2)
    first = eng.compile("{{ a }}", "x")
    assert eng.compile("{{ a }}", "another label") is first  # same source: compiled once
    eng.compile("{{ b }}", "y")
    eng.compile("{{ c }}", "z")  # evicts the least recently used ("{{ a }}")
    assert eng.compile("{{ a }}", "x") is not first
    assert eng.render("plain text, no tags", {}) == "plain text, no tags"


def test_profile_renderer_uses_declared_names(tmp_path: Path) -> None:
    tdir = tmp_path / "templates"
    tdir.mkdir()
    (tdir / "base.j2").write_text("port={{ port }}\n")
    (tdir / "main.j2").write_text("{% include 'base.j2' %}{% for p in peers %}\n{{ p }}\n{% endfor %}")
    r = Renderer(tdir, ["port", "peers", "unused"])
    assert isinstance(r.engine, TemplateEngine) and r.engine.phase == "render"
    assert r.render_file("main.j2", {"port": 1, "peers": ["a", "b"]}) == "port=1\na\nb\n"  # trim_blocks
    with pytest.raises(InvalidArgument) as info:
        r.render_string("{{ port }}{{ other }}", {"port": 1, "other": 2}, where="components.c.env.X")
    # Declared names decide, not what happens to be in the context.
    assert info.value.message == "components.c.env.X: undefined variable 'other'; declare it under 'variables'"
    assert r.render_tree({"a": ["{{ port }}", 3]}, {"port": 5}, where="f") == {"a": ["5", 3]}
    with pytest.raises(InvalidArgument, match=r"template nope\.j2: no such template in the profile"):
        r.render_file("nope.j2", {})
    with pytest.raises(InvalidArgument, match="no templates directory"):
        Renderer(None, []).render_file("x.j2", {})
