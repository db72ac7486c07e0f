"""Profiles: schema errors name the field, variables are typed, templates fail clearly;
the Kubernetes profile renders every component with the flags it needs.

What this covers of the Kubernetes profile (its control-plane images cannot be
fetched on this machine): rendering of every component's command, config file
and health check, the PKI it asks for (verified by OpenSSL) and the kubeconfigs
(loaded by Debian's kubectl). Running apiserver/controller-manager/scheduler/
kubelet/CoreDNS is NOT covered here; etcd from the same profile shape is run for
real in test_etcd_loop.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from app.bootstrap import kubeconfig as kc
from app.bootstrap.catalog import ProfileStore
from app.bootstrap.instantiate import Intent, NodeContext, instantiate
from app.bootstrap.pki import Pki
from app.bootstrap.schema import parse_profile
from app.errors import InvalidArgument

MINIMAL = {"name": "p", "components": [{"name": "a", "image": "busybox", "command": ["sleep", "1"]}]}


def node(tmp_path: Path, ip: str = "10.0.0.5") -> NodeContext:
    return NodeContext("node1", ip, tmp_path, str(tmp_path / "run" / "cri.sock"), str(tmp_path / "dns" / "hosts"))


def bad(doc: dict, match: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        parse_profile(doc, source="t.yaml")
    assert match in err.value.message, err.value.message
    return err.value


def test_schema_errors_name_the_field() -> None:
    comp = MINIMAL["components"][0]
    err = bad({**MINIMAL, "components": [{**comp, "tasks": [{"type": "wait", "timeout_seconds": -1}]}]},
              "components[0].tasks[0].timeout_seconds")
    assert err.details["errors"][0]["field"].startswith("components[0].tasks[0]")
    bad({**MINIMAL, "components": [{**comp, "image": 3}]}, "components[0].image")
    bad({**MINIMAL, "components": [{**comp, "nework": "host"}]}, "components[0].nework: Extra inputs")
    bad({**MINIMAL, "components": [{**comp, "name": "Bad_Name"}]}, "components[0].name")
    bad({**MINIMAL, "components": [{**comp, "depends_on": ["ghost"]}]}, "unknown component 'ghost'")
    bad({**MINIMAL, "components": [comp, comp]}, "duplicate component names")
    bad({**MINIMAL, "components": [{**comp, "name": "a", "depends_on": ["b"]},
                                   {**comp, "name": "b", "depends_on": ["a"]}]}, "dependency cycle")
    bad({**MINIMAL, "variables": {"v": {"type": "enum"}}}, "variables.v")
    bad({**MINIMAL, "variables": {"v": {"type": "float"}}}, "variables.v.type")
    bad({**MINIMAL, "pki": {"certs": [{"name": "x", "ca": "nope", "cn": "x", "usages": ["server"]}]}},
        "CA 'nope' not listed")
    bad({**MINIMAL, "components": [{**comp, "tasks": [{"type": "render"}]}]}, "exactly one 'container'")
    bad({**MINIMAL, "components": [{"name": "a", "command": ["x"]}]}, "'image' is required")
    bad({**MINIMAL, "components": [{**comp, "health": {"check": {"type": "ftp"}}}]}, "components[0].health.check")


def _inst(tmp_path: Path, doc: dict, values: dict | None = None, templates: Path | None = None):
    return instantiate(Intent("t", "p", values or {}), parse_profile(doc), templates, node(tmp_path))


@pytest.mark.parametrize("decl,value,match", [
    ({"type": "port"}, 70000, "between 1 and 65535"),
    ({"type": "port"}, "http", "must be an integer"),
    ({"type": "int", "min": 2}, 1, "between 2"),
    ({"type": "ip"}, "10.0.0.300", "IP address"),
    ({"type": "cidr"}, "10.0.0.0/40", "CIDR"),
    ({"type": "hostname"}, "Not_A_Host", "DNS name"),
    ({"type": "path"}, "relative/p", "absolute path"),
    ({"type": "url"}, "ftp://x", "URL"),
    ({"type": "duration"}, "10 minutes", "duration"),
    ({"type": "image"}, "bad name:1", "image reference"),
    ({"type": "enum", "choices": ["a", "b"]}, "c", "one of"),
    ({"type": "bool"}, "maybe", "true or false"),
    ({"type": "list"}, "x", "must be a list"),
    ({"type": "string", "pattern": "[a-z]+"}, "A1", "must match"),
])
def test_variables_are_typed_and_validated(tmp_path: Path, decl: dict, value: object, match: str) -> None:
    doc = {**MINIMAL, "variables": {"v": decl}}
    with pytest.raises(InvalidArgument) as err:
        _inst(tmp_path, doc, {"v": value})
    assert "variable 'v'" in err.value.message and match in err.value.message, err.value.message


def test_variable_problems_reported_together(tmp_path: Path) -> None:
    doc = {**MINIMAL, "variables": {"need": {"type": "string", "required": True}, "p": {"type": "port"}}}
    with pytest.raises(InvalidArgument) as err:
        _inst(tmp_path, doc, {"p": 0, "typo": 1})
    msg = err.value.message
    assert "'need': required" in msg and "'p'" in msg and "'typo': not declared" in msg


def test_template_errors_name_template_and_variable(tmp_path: Path) -> None:
    tdir = tmp_path / "templates"
    tdir.mkdir()
    (tdir / "c.conf.j2").write_text("port={{ prot }}\n")
    comp = {**MINIMAL["components"][0], "templates": [{"source": "c.conf.j2", "dest": "c.conf"}]}
    doc = {**MINIMAL, "variables": {"port": {"type": "port", "default": 1}}, "components": [comp]}
    with pytest.raises(InvalidArgument) as err:
        _inst(tmp_path, doc, templates=tdir)
    assert err.value.message == "template c.conf.j2: undefined variable 'prot'; declare it under 'variables'"
    assert err.value.phase == "render" and err.value.details["variables"] == ["prot"]
    # a field template: names the field path
    comp2 = {**MINIMAL["components"][0], "command": ["run", "--port={{ port.nope }}"]}
    with pytest.raises(InvalidArgument) as err:
        _inst(tmp_path, {**doc, "components": [comp2]})
    assert "components.a.command[1]" in err.value.message and "nope" in err.value.message
    (tdir / "c.conf.j2").write_text("port={{ port\n")
    with pytest.raises(InvalidArgument, match=r"template c.conf.j2: template syntax error on line 1"):
        _inst(tmp_path, doc, templates=tdir)
    comp3 = {**comp, "templates": [{"source": "missing.j2", "dest": "c.conf"}]}
    with pytest.raises(InvalidArgument, match="no such template"):
        _inst(tmp_path, {**doc, "components": [comp3]}, templates=tdir)
    comp4 = {**comp, "templates": [{"source": "x", "content": "a", "dest": "../escape"}]}
    with pytest.raises(InvalidArgument, match="relative to the component dir"):
        _inst(tmp_path, {**doc, "components": [comp4]})


def test_sandbox_blocks_python_internals(tmp_path: Path) -> None:
    comp = {**MINIMAL["components"][0], "command": ["{{ node_name.__class__.__mro__ }}"]}
    with pytest.raises(InvalidArgument):
        _inst(tmp_path, {**MINIMAL, "components": [comp]})


def test_builtin_profiles_parse_and_list() -> None:
    store = ProfileStore()
    assert {"etcd", "kubernetes"} <= set(store.names())
    for name in ("etcd", "kubernetes"):
        profile, tdir = store.get(name)
        assert profile.name == name and tdir is not None


def _flags(cmd: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for arg in cmd[1:]:
        if arg.startswith("--"):
            k, _, v = arg[2:].partition("=")
            out[k] = v
    return out


@pytest.fixture
def k8s(tmp_path: Path):
    profile, tdir = ProfileStore().get("kubernetes")
    n = node(tmp_path)
    inst = instantiate(Intent("k8s", "kubernetes", {"kubernetes_version": "v1.31.0", "extra_sans": ["api.example"]},
                              ("control-plane", "worker")), profile, tdir, n)
    return n, inst, {c.name: c for c in inst.components}


def test_kubernetes_components_have_required_flags(k8s) -> None:
    n, _, comps = k8s
    pki, kcd = str(n.pki_dir), str(n.kubeconfig_dir)
    assert list(comps) == ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "rbac",
                           "kubelet", "coredns"]
    assert all(c.network == "host" for c in comps.values())
    api = comps["kube-apiserver"]
    assert api.image == "registry.k8s.io/kube-apiserver:v1.31.0"
    f = _flags(api.command)
    assert f["etcd-servers"] == "https://127.0.0.1:2379"
    for flag, path in {"client-ca-file": "ca.crt", "tls-cert-file": "apiserver.crt",
                       "tls-private-key-file": "apiserver.key", "etcd-cafile": "etcd-ca.crt",
                       "etcd-certfile": "apiserver-etcd-client.crt", "etcd-keyfile": "apiserver-etcd-client.key",
                       "kubelet-client-certificate": "apiserver-kubelet-client.crt",
                       "service-account-key-file": "sa.pub", "service-account-signing-key-file": "sa.key",
                       "proxy-client-cert-file": "front-proxy-client.crt",
                       "requestheader-client-ca-file": "front-proxy-ca.crt"}.items():
        assert f[flag] == f"{pki}/{path}", flag
    assert f["service-account-issuer"] == "https://kubernetes.default.svc.cluster.local"
    assert f["authorization-mode"] == "Node,RBAC" and f["service-cluster-ip-range"] == "10.96.0.0/12"
    assert f["advertise-address"] == "10.0.0.5"
    assert api.depends_on == ("k8s.etcd",)
    cm = _flags(comps["kube-controller-manager"].command)
    assert cm["kubeconfig"] == f"{kcd}/controller-manager.conf"
    assert cm["cluster-signing-key-file"] == f"{pki}/ca.key"
    assert cm["service-account-private-key-file"] == f"{pki}/sa.key"
    assert cm["root-ca-file"] == f"{pki}/ca.crt" and cm["use-service-account-credentials"] == "true"
    sch = _flags(comps["kube-scheduler"].command)
    assert sch["kubeconfig"] == f"{kcd}/scheduler.conf" and sch["leader-elect"] == "true"
    # Each component is given the directories it reads, at the same path.
    mounts = {m.source for m in api.mounts}
    assert pki in mounts
    assert {kcd, str(n.cri_socket)} <= {m.source for m in comps["kubelet"].mounts}


def test_kubelet_config_points_at_our_cri_socket(k8s) -> None:
    n, _, comps = k8s
    kubelet = comps["kubelet"]
    cfg = yaml.safe_load(kubelet.files[0].content)
    assert cfg["kind"] == "KubeletConfiguration"
    assert cfg["containerRuntimeEndpoint"] == f"unix://{n.cri_socket}"
    assert cfg["authentication"]["x509"]["clientCAFile"] == f"{n.pki_dir}/ca.crt"
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["authorization"]["mode"] == "Webhook"
    assert cfg["clusterDNS"] == ["10.96.0.10"] and cfg["clusterDomain"] == "cluster.local"
    f = _flags(kubelet.command)
    assert f["kubeconfig"] == f"{n.kubeconfig_dir}/kubelet.conf" and f["config"] == kubelet.files[0].path
    assert kubelet.runs_on == "host" and kubelet.image == ""  # no kubelet image exists: a host process
    assert all(c.runs_on == "container" and c.image for n_, c in comps.items() if n_ != "kubelet")
    root = next(m for m in kubelet.mounts if m.source == "/var/lib/kubelet")
    assert root.create and not root.readonly


def test_corefile_serves_internal_zone_from_update_dns_records_file(k8s) -> None:
    n, _, comps = k8s
    corefile = comps["coredns"].files[0].content.decode()
    block = corefile[corefile.index("internal:53 {"):corefile.index(".:53 {")]
    assert f"hosts {n.dns_hosts_file} internal {{" in block and "reload" in block
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa" in corefile
    assert f"kubeconfig {n.kubeconfig_dir}/coredns.conf" in corefile
    assert comps["coredns"].health.check.url == "http://127.0.0.1:8080/health"
    # the hosts file's directory is bound (the file is replaced by rename on every update)
    assert any(m.source == str(Path(n.dns_hosts_file).parent) and m.create for m in comps["coredns"].mounts)


def test_worker_role_runs_only_the_kubelet(tmp_path: Path) -> None:
    profile, tdir = ProfileStore().get("kubernetes")
    inst = instantiate(Intent("k8s", "kubernetes", {"control_plane_endpoint": "https://10.0.0.1:6443"},
                              ("worker",)), profile, tdir, node(tmp_path))
    assert [c.name for c in inst.components] == ["kubelet"]
    assert [k.name for k in inst.kubeconfigs] == ["kubelet"] and inst.kubeconfigs[0].server == "https://10.0.0.1:6443"
    assert [leaf.name for leaf in inst.leaves] == ["kubelet-server"]


def test_kubernetes_pki_and_kubeconfigs_are_valid(k8s) -> None:
    n, inst, _ = k8s
    pki = Pki(n.pki_dir)
    pki.ensure(list(inst.cas), list(inst.leaves), sa_key=inst.sa_key)
    written = kc.ensure(n.kubeconfig_dir, list(inst.kubeconfigs), pki)
    assert sorted(written) == ["admin", "controller-manager", "coredns", "kubelet", "scheduler"]
    assert kc.ensure(n.kubeconfig_dir, list(inst.kubeconfigs), pki) == []  # idempotent

    def verify(ca: str, leaf: str, purpose: str) -> None:
        r = subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile", str(pki.crt(ca)),
                            str(pki.crt(leaf))], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr

    for ca, leaf, purpose in [("ca", "apiserver", "sslserver"), ("ca", "apiserver-kubelet-client", "sslclient"),
                              ("etcd-ca", "apiserver-etcd-client", "sslclient"),
                              ("front-proxy-ca", "front-proxy-client", "sslclient"),
                              ("etcd-ca", "etcd-server", "sslserver"), ("etcd-ca", "etcd-peer", "sslclient"),
                              ("ca", "kubelet-server", "sslserver"), ("ca", "kubeconfig-admin", "sslclient"),
                              ("ca", "kubeconfig-kubelet", "sslclient")]:
        verify(ca, leaf, purpose)
    api = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(pki.crt("apiserver"))],
                         capture_output=True, text=True, check=True).stdout
    for san in ("DNS:kubernetes.default.svc.cluster.local", "DNS:api.example", "IP Address:10.96.0.1",
                "IP Address:10.0.0.5", "IP Address:127.0.0.1"):
        assert san in api
    kubelet_subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in",
                                      str(pki.crt("kubeconfig-kubelet"))], capture_output=True, text=True).stdout
    assert "O = system:nodes, CN = system:node:node1" in kubelet_subject
    for name in written:
        path = n.kubeconfig_dir / f"{name}.conf"
        assert path.stat().st_mode & 0o777 == 0o600
        out = subprocess.run(["kubectl", "config", "view", "--kubeconfig", str(path), "--raw", "-o", "json"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        cfg = json.loads(out.stdout)
        assert cfg["current-context"] and cfg["clusters"][0]["cluster"]["server"].startswith("https://")
        assert cfg["users"][0]["user"]["client-certificate-data"]
        minified = subprocess.run(["kubectl", "config", "view", "--kubeconfig", str(path), "--minify"],
                                  capture_output=True, text=True, timeout=30)
        assert minified.returncode == 0 and "DATA+OMITTED" in minified.stdout
