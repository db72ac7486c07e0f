"""Turn (intent, profile, node facts) into fully rendered desired state (pure but for reading templates).

An intent names a profile and gives values for its variables::

    Intent(name="etcd", profile="etcd", values={"client_port": 2379}, roles=("control-plane",))

The result, :class:`Instance`, holds the PKI requests, the kubeconfig requests
and one :class:`DesiredComponent` per component the node's roles select.
Component keys are ``<intent>.<component>``. Each component owns
``<bootstrap_dir>/<intent>/<component>/`` (rendered files, ``volumes/<name>``);
that directory is bound into the component's container at the same path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from app.bootstrap.kubeconfig import KubeconfigRequest
from app.bootstrap.model import DesiredComponent, MountSpec, RenderedFile
from app.bootstrap.pki import LeafRequest
from app.bootstrap.render import Renderer
from app.bootstrap.schema import Component, Health, Profile, Task, format_errors
from app.bootstrap.variables import BUILTINS, resolve
from app.errors import InvalidArgument

_TASKS: TypeAdapter[list[Any]] = TypeAdapter(list[Task])


@dataclass(frozen=True)
class Intent:
    name: str
    profile: str
    values: Mapping[str, Any] = field(default_factory=dict)
    roles: tuple[str, ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class NodeContext:
    node_name: str
    node_ip: str
    state_dir: Path
    cri_socket: str
    dns_hosts_file: str

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfig_dir(self) -> Path:
        return self.state_dir / "kubeconfigs"

    @property
    def bootstrap_dir(self) -> Path:
        return self.state_dir / "bootstrap"


@dataclass(frozen=True)
class Instance:
    intent: str
    cas: tuple[str, ...]
    sa_key: bool
    leaves: tuple[LeafRequest, ...]
    kubeconfigs: tuple[KubeconfigRequest, ...]
    components: tuple[DesiredComponent, ...]


def _selected(roles: list[str] | None, node_roles: tuple[str, ...]) -> bool:
    return roles is None or bool(set(roles) & set(node_roles))


def _entries(values: list[str]) -> tuple[str, ...]:
    """SAN entries: one rendered entry may expand to a comma-separated list; empties vanish."""
    out: list[str] = []
    for v in values:
        out += [x.strip() for x in v.split(",") if x.strip() and x.strip() not in out]
    return tuple(out)


def _truthy(value: str | bool, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0", ""):
        return False
    raise InvalidArgument(f"{where}: must render to true or false, got {value!r}", phase="render")


def base_context(intent: Intent, profile: Profile, node: NodeContext) -> dict[str, Any]:
    ctx = resolve(profile.variables, intent.values)
    ctx.update(
        node_name=node.node_name, node_ip=node.node_ip, roles=list(intent.roles), state_dir=str(node.state_dir),
        pki_dir=str(node.pki_dir), kubeconfig_dir=str(node.kubeconfig_dir), cri_socket=node.cri_socket,
        dns_hosts_file=node.dns_hosts_file, intent=intent.name, component_dir="", volumes={},
    )
    return ctx


def _component(intent: Intent, comp: Component, r: Renderer, ctx: dict[str, Any], node: NodeContext,
               fingerprints: Mapping[str, str]) -> DesiredComponent:
    where = f"components.{comp.name}"
    cdir = node.bootstrap_dir / intent.name / comp.name
    volumes = {v.name: str(cdir / "volumes" / v.name) for v in comp.volumes}
    cctx = {**ctx, "component_dir": str(cdir), "volumes": volumes}
    raw = comp.model_dump(exclude={"templates", "tasks", "health", "volumes", "enabled", "roles"})
    out = r.render_tree(raw, cctx, where=where)
    files = []
    for i, t in enumerate(comp.templates):
        dest = r.render_string(t.dest, cctx, where=f"{where}.templates[{i}].dest")
        if dest.startswith("/") or ".." in Path(dest).parts:
            raise InvalidArgument(f"{where}.templates[{i}].dest: must be relative to the component dir",
                                  phase="profile")
        text = r.render_file(t.source, cctx, inline=t.content)
        files.append(RenderedFile(str(cdir / dest), text.encode(), t.mode))
    health = None
    try:
        if comp.health is not None:
            hraw = r.render_tree(comp.health.model_dump(), cctx, where=f"{where}.health")
            health = Health.model_validate(hraw)
        traw = r.render_tree([t.model_dump() for t in comp.effective_tasks()], cctx, where=f"{where}.tasks")
        tasks = _TASKS.validate_python(traw)
    except ValidationError as exc:
        text = "; ".join(f"{e['field']}: {e['message']}" for e in format_errors(exc))
        raise InvalidArgument(f"{where}: after rendering: {text}", phase="render") from exc
    mounts = [MountSpec(m["source"], m["target"] or m["source"], m["readonly"], m["create"])
              for m in out["mounts"]]
    mounts.append(MountSpec(str(cdir), str(cdir), readonly=False))
    # Restart a component when a certificate it reads is renewed: its spec hash includes the
    # fingerprints of every PKI file whose path appears in what it is given.
    blob = json.dumps([out, [f.content.decode(errors="replace") for f in files], health and health.model_dump()])
    extra = ",".join(f"{p}={fp}" for p, fp in sorted(fingerprints.items()) if p in blob)
    return DesiredComponent(
        key=f"{intent.name}.{comp.name}", intent=intent.name, name=comp.name, image=out["image"],
        command=tuple(out["command"]), env=tuple(sorted(out["env"].items())), mounts=tuple(mounts),
        network=out["network"], runs_on=out["runs_on"], privileged=out["privileged"], directory=str(cdir),
        files=tuple(files), volumes=tuple(volumes.values()),
        depends_on=tuple(f"{intent.name}.{d}" for d in comp.depends_on), health=health, tasks=tuple(tasks),
        restart=out["restart"], extra_hash=extra,
    )


_RENDERERS: dict[tuple[int, Path | None], tuple[Profile, Renderer]] = {}


def _renderer(profile: Profile, templates_dir: Path | None) -> Renderer:
    """One Renderer (and so one compiled-template cache) per loaded profile: a no-op pass
    re-renders everything and must not recompile. Template edits on disk still show, as the
    cache is keyed by the template's source text."""
    key = (id(profile), templates_dir)
    hit = _RENDERERS.get(key)
    if hit is None or hit[0] is not profile:
        if len(_RENDERERS) > 64:
            _RENDERERS.clear()
        hit = (profile, Renderer(templates_dir, [*profile.variables, *BUILTINS]))
        _RENDERERS[key] = hit
    return hit[1]


def instantiate(intent: Intent, profile: Profile, templates_dir: Path | None, node: NodeContext,
                fingerprints: Mapping[str, str] | None = None) -> Instance:
    """Render one intent. Raises :class:`InvalidArgument` naming the field, template and variable."""
    ctx = base_context(intent, profile, node)
    r = _renderer(profile, templates_dir)
    leaves = []
    for i, c in enumerate(profile.pki.certs):
        if not _selected(c.roles, intent.roles):
            continue
        rc = r.render_tree(c.model_dump(), ctx, where=f"pki.certs[{i}]")
        leaves.append(LeafRequest(rc["name"], rc["ca"], rc["cn"], tuple(rc["organization"]), tuple(rc["usages"]),
                                  _entries(rc["dns"]), _entries(rc["ips"])))
    kcs = []
    for i, k in enumerate(profile.kubeconfigs):
        if not _selected(k.roles, intent.roles):
            continue
        rk = r.render_tree(k.model_dump(), ctx, where=f"kubeconfigs[{i}]")
        kcs.append(KubeconfigRequest(rk["name"], rk["user"], tuple(rk["groups"]), rk["server"]))
    comps = []
    chosen = set()
    for comp in profile.components:
        if not _selected(comp.roles, intent.roles):
            continue
        if not _truthy(r.render_string(str(comp.enabled), ctx, where=f"components.{comp.name}.enabled")
                       if isinstance(comp.enabled, str) else comp.enabled, f"components.{comp.name}.enabled"):
            continue
        chosen.add(comp.name)
        comps.append(_component(intent, comp, r, ctx, node, fingerprints or {}))
    for dc in comps:
        for dep in dc.depends_on:
            if dep.split(".", 1)[1] not in chosen:
                raise InvalidArgument(f"components.{dc.name}: depends on {dep.split('.', 1)[1]!r}, which the "
                                      f"roles {list(intent.roles)} do not select", phase="profile")
    return Instance(intent.name, tuple(profile.pki.cas), profile.pki.service_account_key, tuple(leaves),
                    tuple(kcs), tuple(comps))
