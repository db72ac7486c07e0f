"""Dependency order between components (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def topo_order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Names ordered so that every component comes after what it depends on.

    Ties keep the input order, so plans are stable from pass to pass. Raises
    ``ValueError`` naming the cycle when there is one. Dependencies on names
    not in ``deps`` are ignored (the caller validates references).
    """
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(name: str, path: list[str]) -> None:
        mark = state.get(name)
        if mark == 2:
            return
        if mark == 1:
            cycle = [*path[path.index(name):], name]
            raise ValueError("dependency cycle: " + " -> ".join(cycle))
        state[name] = 1
        for dep in deps.get(name, ()):
            if dep in deps:
                visit(dep, [*path, name])
        state[name] = 2
        order.append(name)

    for name in deps:
        visit(name, [])
    return order
