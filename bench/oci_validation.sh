#!/usr/bin/env bash
# OCI runtime-tools validation suite against vapp-oci, side by side with runc (run as root).
#
#   bash bench/oci_validation.sh                 # every validation test found
#   bash bench/oci_validation.sh create kill     # only these
#   NO_RUNC=1 bash bench/oci_validation.sh       # vapp-oci only
#
# Where the suite's source comes from (it is never committed here):
#   $RUNTIME_TOOLS_SRC   an opencontainers/runtime-tools tree with validation/ and
#                        cmd/runtimetest/ (e.g. an upstream checkout copied onto this host)
#   .test-work/runtime-tools-src   the same, cached on this host (used when the variable is unset)
# Debian's golang-github-opencontainers-runtime-tools-dev ships only the library (generate,
# specerror, validate, ...), not validation/ nor cmd/runtimetest, and the Debian mirror here
# serves no source tarballs; the library and every Go dependency do come from Debian packages.
#
# Layout under .test-work/oci-validation/ (ignored, rebuilt when the source changes):
#   gopath/src/github.com/...   Debian's library + the suite's validation/ and cmd/ on top
#   bin/<test> bin/runtimetest bin/rootfs-amd64.tar.gz (busybox-static)   tests run from bin/
#   logs/<runtime>/<test>.tap|.err
# Each test binary is one TAP stream; a test counts "ok" lines and "not ok" lines; the hook
# tests that report a failure only as a YAML "error" diagnostic (plan 1..0) count as one not ok.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$REPO/.test-work/oci-validation
SRC=${RUNTIME_TOOLS_SRC:-$REPO/.test-work/runtime-tools-src}
TIMEOUT=${TEST_TIMEOUT:-120}
VAPP=${VAPP_OCI:-$REPO/.venv/bin/vapp-oci}
RUNC=${RUNC:-$(command -v runc || echo /usr/sbin/runc)}

[ "$(id -u)" = 0 ] || { echo "oci_validation: run as root (the suite creates root containers)" >&2; exit 2; }

need=()
for pkg in golang-go golang-github-opencontainers-runtime-tools-dev golang-github-google-uuid-dev busybox-static; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >/dev/null
fi

DEB=/usr/share/gocode/src/github.com/opencontainers/runtime-tools
if [ ! -d "$SRC/validation" ] && [ -d "$DEB/validation" ]; then SRC=$DEB; fi
if [ ! -d "$SRC/validation" ] || [ ! -d "$SRC/cmd/runtimetest" ]; then
    cat >&2 <<EOF
oci_validation: no runtime-tools validation sources at $SRC
  Debian's package has only the library. Put a runtime-tools tree (validation/, cmd/runtimetest/)
  there or point RUNTIME_TOOLS_SRC at one, then re-run.
EOF
    exit 2
fi

# --- build (cached: rebuilt when the source tree's checksum changes) ---------------------------
stamp=$(cd "$SRC" && find validation cmd util -name '*.go' 2>/dev/null | sort | xargs cat | sha256sum | cut -c1-16)
GP=$WORK/gopath
if [ "$(cat "$WORK/stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$WORK/gopath" "$WORK/bin"
    dst=$GP/src/github.com/opencontainers/runtime-tools
    mkdir -p "$dst" "$WORK/bin"
    cp -a "$DEB/." "$dst/"
    rm -f "$dst/go.mod" "$dst/go.sum"                        # GOPATH mode: no module graph
    for part in validation cmd util; do
        [ -d "$SRC/$part" ] && cp -a "$SRC/$part" "$dst/"
    done
    if [ ! -d /usr/share/gocode/src/github.com/mndrix/tap-go ]; then
        # tap-go is not packaged in Debian: a small TAP 13 producer with the API the suite uses
        mkdir -p "$GP/src/github.com/mndrix/tap-go"
        cat > "$GP/src/github.com/mndrix/tap-go/tap.go" <<'GO'
package tap

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

type T struct {
	next   int
	Writer io.Writer
	todo   bool
}

func New() *T { return &T{next: 1, Writer: os.Stdout} }
func (t *T) w() io.Writer {
	if t.Writer == nil {
		return os.Stdout
	}
	return t.Writer
}
func (t *T) Header(n int) {
	fmt.Fprintln(t.w(), "TAP version 13")
	if n > 0 {
		fmt.Fprintf(t.w(), "1..%d\n", n)
	}
}
func (t *T) Ok(ok bool, desc string) {
	s := "ok"
	if !ok {
		s = "not ok"
	}
	d := strings.ReplaceAll(desc, "\n", " ")
	if t.todo {
		d += " # TODO"
	}
	fmt.Fprintf(t.w(), "%s %d - %s\n", s, t.next, d)
	t.next++
}
func (t *T) Pass(desc string) { t.Ok(true, desc) }
func (t *T) Fail(desc string) { t.Ok(false, desc) }
func (t *T) Skip(count int, desc string) {
	for i := 0; i < count; i++ {
		fmt.Fprintf(t.w(), "ok %d # SKIP %s\n", t.next, desc)
		t.next++
	}
}
func (t *T) Todo() *T                 { n := *t; n.todo = true; return &n }
func (t *T) Count() int               { return t.next - 1 }
func (t *T) AutoPlan()                { fmt.Fprintf(t.w(), "1..%d\n", t.Count()) }
func (t *T) Diagnostic(message string) {
	for _, l := range strings.Split(message, "\n") {
		fmt.Fprintf(t.w(), "# %s\n", l)
	}
}
func (t *T) Diagnosticf(format string, a ...interface{}) { t.Diagnostic(fmt.Sprintf(format, a...)) }
func (t *T) YAML(v interface{}) error {
	b, err := json.MarshalIndent(v, "  ", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintf(t.w(), "  ---\n  %s\n  ...\n", b)
	return nil
}
GO
        if [ ! -d "$dst/util/tap" ]; then
            mkdir -p "$dst/util/tap" && cp "$GP/src/github.com/mndrix/tap-go/tap.go" "$dst/util/tap/"
        fi
    fi
    export GO111MODULE=off GOPATH=$GP:/usr/share/gocode GOFLAGS= CGO_ENABLED=0 GOCACHE=$WORK/gocache
    (cd "$dst" && go build -o "$WORK/bin/runtimetest" ./cmd/runtimetest)
    for dir in "$dst"/validation/*/; do
        name=$(basename "$dir")
        [ "$name" = util ] && continue
        [ -f "$dir/$name.go" ] || continue
        (cd "$dst" && go build -o "$WORK/bin/$name" "./validation/$name") 2>"$WORK/build-$name.err" \
            || echo "build failed: $name (see $WORK/build-$name.err)" >&2
    done
    rootfs=$(mktemp -d)
    chmod 755 "$rootfs"   # tar restores "." onto the bundle dir, which is the container's /
    mkdir -p "$rootfs"/{bin,proc,dev,sys,tmp,etc}
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
    done
    tar -C "$rootfs" -czf "$WORK/bin/rootfs-amd64.tar.gz" .
    rm -rf "$rootfs"
    echo "$stamp" > "$WORK/stamp"
fi

# --- run ---------------------------------------------------------------------------------------
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    for f in "$WORK"/bin/*; do
        n=$(basename "$f")
        case $n in runtimetest|rootfs-*) continue ;; esac
        tests+=("$n")
    done
fi
runtimes=("vapp-oci=$VAPP")
[ -n "${NO_RUNC:-}" ] || runtimes+=("runc=$RUNC")

count() {  # TAP file -> "ok notok"
    awk '/^ok /{ok++} /^not ok /{bad++} /"error":/{err++} /^1\.\.0$/{zero=1}
         END{ if (zero && err && !bad) bad=1; printf "%d %d\n", ok+0, bad+0 }' "$1"
}

printf '%-34s' "test"
for rt in "${runtimes[@]}"; do printf ' %18s' "${rt%%=*} ok/notok"; done
echo
declare -A tot_ok tot_bad clean
for t in "${tests[@]}"; do
    printf '%-34s' "$t"
    for rt in "${runtimes[@]}"; do
        name=${rt%%=*} bin=${rt#*=}
        mkdir -p "$WORK/logs/$name"
        log=$WORK/logs/$name/$t
        (cd "$WORK/bin" && RUNTIME=$bin timeout "$TIMEOUT" "./$t" >"$log.tap" 2>"$log.err") || \
            echo "exit $?" >>"$log.err"
        read -r ok bad < <(count "$log.tap")
        if [ "$ok" = 0 ] && [ "$bad" = 0 ] && grep -q '^exit ' "$log.err"; then bad=1; fi
        tot_ok[$name]=$(( ${tot_ok[$name]:-0} + ok ))
        tot_bad[$name]=$(( ${tot_bad[$name]:-0} + bad ))
        [ "$bad" = 0 ] && clean[$name]=$(( ${clean[$name]:-0} + 1 ))
        printf ' %18s' "$ok/$bad"
    done
    echo
done
for rt in "${runtimes[@]}"; do
    name=${rt%%=*}
    echo "summary $name: ${clean[$name]:-0}/${#tests[@]} tests clean, ${tot_ok[$name]:-0} ok, ${tot_bad[$name]:-0} not ok (logs: $WORK/logs/$name/)"
done
