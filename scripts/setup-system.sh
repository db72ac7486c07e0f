#!/usr/bin/env bash
# Prepare a Debian 12 machine for 4lock-core development and its test suite.
#
# Idempotent; run as root (CI runs it on a fresh clone). What it does, and why:
#   1. apt packages the runtime, the tests and the benchmarks drive for real
#      (`apt-get update` only when something is missing, so reruns are offline).
#   2. /dev/net/tun and /dev/fuse to 0666: there is no udev here to do it, and
#      pasta, slirp4netns and fuse-overlayfs need them as an unprivileged user.
#   3. the unprivileged test user `vapptest` with /etc/subuid and /etc/subgid
#      ranges (rootless tests run as it), able to read the repo and run .venv.
#   4. uv, which builds the project's virtualenv.
set -euo pipefail

if [[ "$(id -u)" -ne 0 ]]; then
    echo "setup-system.sh: must run as root (try: sudo bash $0)" >&2
    exit 1
fi

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEST_USER="${VAPP_TEST_USER:-vapptest}"

PACKAGES=(
    crun runc skopeo docker-registry passt slirp4netns uidmap fuse-overlayfs
    busybox-static umoci containerd containernetworking-plugins
    etcd-server etcd-client postgresql iproute2 nftables hyperfine iperf3
    openssl procps psmisc util-linux iptables
    python3 python3-venv python3-pip ca-certificates
)
# Another package owns /usr/bin/kubectl on some machines: installing
# kubernetes-client over it fails, and any kubectl will do for the tests.
if ! command -v kubectl >/dev/null 2>&1; then
    PACKAGES+=(kubernetes-client)
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "setup-system.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

# 2. device nodes for rootless networking and fuse-overlayfs.
for dev in /dev/net/tun /dev/fuse; do
    if [[ -e "$dev" ]]; then
        chmod 666 "$dev"
    else
        echo "setup-system.sh: warning: $dev does not exist (rootless networking/fuse will not work)" >&2
    fi
done

# 3. the unprivileged test user and its subordinate id ranges.
if ! id "$TEST_USER" >/dev/null 2>&1; then
    useradd -m -s /bin/bash "$TEST_USER"
    echo "setup-system.sh: created user $TEST_USER"
fi

# Pick a subordinate range start that does not overlap another user's range.
next_sub_start() {
    local file=$1
    awk -F: 'BEGIN { max = 100000 } NF >= 3 { end = $2 + $3; if (end > max) max = end } END { print max }' "$file"
}
touch /etc/subuid /etc/subgid
if ! grep -q "^${TEST_USER}:" /etc/subuid; then
    start=$(next_sub_start /etc/subuid)
    usermod --add-subuids "${start}-$((start + 65535))" "$TEST_USER"
    echo "setup-system.sh: added subuids ${start}+65536 for $TEST_USER"
fi
if ! grep -q "^${TEST_USER}:" /etc/subgid; then
    start=$(next_sub_start /etc/subgid)
    usermod --add-subgids "${start}-$((start + 65535))" "$TEST_USER"
    echo "setup-system.sh: added subgids ${start}+65536 for $TEST_USER"
fi

# The test user runs the repo's code: every ancestor of the repo (and of the
# interpreter the venv points at) must be traversable by "others".
make_traversable() {
    local dir=$1
    while [[ "$dir" != "/" && -n "$dir" ]]; do
        if [[ -d "$dir" ]] && ! su -s /bin/sh "$TEST_USER" -c "test -x '$dir'" 2>/dev/null; then
            chmod o+x "$dir"
            echo "setup-system.sh: chmod o+x $dir (so $TEST_USER can reach the repo)"
        fi
        dir=$(dirname "$dir")
    done
}
make_traversable "$REPO_DIR"
if ! su -s /bin/sh "$TEST_USER" -c "test -r '$REPO_DIR' && test -x '$REPO_DIR'"; then
    chmod o+rx "$REPO_DIR"
    echo "setup-system.sh: chmod o+rx $REPO_DIR"
fi
if [[ -e "$REPO_DIR/.venv/bin/python" ]]; then
    py=$(readlink -f "$REPO_DIR/.venv/bin/python")
    make_traversable "$(dirname "$py")"
    if ! su -s /bin/sh "$TEST_USER" -c "'$REPO_DIR/.venv/bin/python' -c pass" 2>/dev/null; then
        echo "setup-system.sh: warning: $TEST_USER cannot run $REPO_DIR/.venv/bin/python ($py);" \
            "build the venv on /usr/bin/python3 (UV_PYTHON=/usr/bin/python3 uv sync)" >&2
    fi
fi

# 4. uv builds the virtualenv.
if ! command -v uv >/dev/null 2>&1; then
    python3 -m pip install uv 2>/dev/null || python3 -m pip install --break-system-packages uv
fi

echo "setup-system.sh: system ready"
