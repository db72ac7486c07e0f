#!/bin/sh
# Container entrypoint for vapp-core (PID 1 is tini, which runs this).
#
#   (no args) | -flags...   -> vapp-core daemon [flags]
#   <vapp-core subcommand>  -> vapp-core <subcommand> ...   (check, migrate, config, daemon, ...)
#   <program on PATH> ...   -> that program (e.g. sh, for debugging)
#
# Started as root (compose does, so it can fix ownership of bind-mounted
# directories): chown the state and run dirs to the vapp user, then drop to it
# with setpriv. VAPP_ROOTFUL=1 keeps root (a rootful node).
set -eu

VAPP_BIN="${VAPP_BIN:-/opt/vapp/venv/bin/vapp-core}"
VAPP_USER="${VAPP_USER:-vapp}"
STATE_DIR="${VAPP_STATE_DIR:-/var/lib/vapp}"
RUN_DIR="${VAPP_RUN_DIR:-/run/vapp}"

die() {
    echo "vapp-entrypoint: $*" >&2
    exit 1
}

if [ "$(id -u)" = 0 ] && [ "${VAPP_ROOTFUL:-0}" != 1 ]; then
    id "$VAPP_USER" >/dev/null 2>&1 || die "user $VAPP_USER does not exist"
    mkdir -p "$STATE_DIR" "$RUN_DIR"
    chown "$VAPP_USER:" "$STATE_DIR" "$RUN_DIR"
    HOME="$(getent passwd "$VAPP_USER" | cut -d: -f6)"
    export HOME
    # --inh-caps=-all: nothing of root's survives except through setuid helpers (newuidmap).
    exec setpriv --reuid="$VAPP_USER" --regid="$VAPP_USER" --init-groups --inh-caps=-all -- "$0" "$@"
fi

for dir in "$STATE_DIR" "$RUN_DIR"; do
    mkdir -p "$dir" 2>/dev/null || true
    [ -w "$dir" ] || die "$dir is not writable by uid $(id -u): chown it to that uid on the host, or start the container as root once (it fixes ownership and drops privileges)"
done

case "${1:-}" in
    "") set -- daemon ;;
    -*) set -- daemon "$@" ;;
    daemon | check | migrate | config) ;;
    */*) exec "$@" ;;
    *)
        if command -v "$1" >/dev/null 2>&1; then
            exec "$@"
        fi
        ;;
esac
exec "$VAPP_BIN" "$@"
