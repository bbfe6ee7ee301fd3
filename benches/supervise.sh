#!/bin/sh
# Benchmark of `regclean supervise`: what the proxy costs and how long a cycle takes.
#   benches/supervise.sh [REPS]          (default 5; needs docker-registry, skopeo, curl, cargo)
# 1. Pull throughput of one 256 MiB layer, direct from a registry against through the
#    supervisor's proxy (two registries on the same store, alternated run by run).
#    Raw bytes (curl to /dev/null): the relay's worst case.
# 2. An image pull as a client does it (skopeo copy to a local directory: every blob
#    verified against its digest and written), same image, same two ways.
# 3. Small requests: 200 manifest GETs, one connection each (latency-bound), same two ways.
# 4. A collection cycle on the medium synthetic store (regclean-genstore --size medium):
#    the read-only window and the whole cycle, as the triggering run reports them.
# Prints a Markdown table.
set -eu
cd "$(dirname "$0")/.."
REPS=${1:-5}
cargo build --release --quiet --bin regclean --bin regclean-genstore
BIN=$PWD/target/release/regclean
GEN=$PWD/target/release/regclean-genstore
W=$(mktemp -d /var/tmp/regclean-sup.XXXXXX)
PIDS=""
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$W"; }
trap cleanup EXIT INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
config() { # config FILE ROOT PORT
    printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$2" "$3" > "$1"
}
wait_up() { for _ in $(seq 200); do curl -fs "http://127.0.0.1:$1/v2/" >/dev/null && return 0; sleep 0.05; done; echo "no registry on $1" >&2; exit 1; }
now() { date +%s.%N; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# An image with one 256 MiB layer, as a skopeo dir: layout.
IMG=$W/img; mkdir -p "$IMG"
head -c $((256 * 1024 * 1024)) /dev/urandom > "$W/layer"
L=$(sha "$W/layer"); mv "$W/layer" "$IMG/$L"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' > "$W/cfg"
C=$(sha "$W/cfg"); mv "$W/cfg" "$IMG/$C"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$C" "$(stat -c %s "$IMG/$C")" "$L" "$(stat -c %s "$IMG/$L")" > "$IMG/manifest.json"
echo 'Directory Transport Version: 1.1' > "$IMG/version"

ROOT=$W/root; mkdir -p "$ROOT"
PD=$(port); PS=$(port)
config "$W/direct.yml" "$ROOT" "$PD"; config "$W/sup.yml" "$ROOT" "$PS"
docker-registry serve "$W/direct.yml" 2>/dev/null & PIDS="$PIDS $!"
"$BIN" supervise -- docker-registry serve "$W/sup.yml" 2>/dev/null & PIDS="$PIDS $!"
wait_up "$PD"; wait_up "$PS"
skopeo copy -q --preserve-digests --dest-tls-verify=false "dir:$IMG" "docker://127.0.0.1:$PD/big:v1"

blob() { curl -fs -o /dev/null "http://127.0.0.1:$1/v2/big/blobs/sha256:$L"; }
manifests() { i=0; while [ $i -lt 200 ]; do curl -fs -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$1/v2/big/manifests/v1"; i=$((i + 1)); done; }
pull() { rm -rf "$W/out"; skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$1/big:v1" "dir:$W/out"; }
timed() { t0=$(now); "$@"; t1=$(now); echo "$t1 - $t0" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

blob "$PD"; blob "$PS" # warm the page cache
: > "$W/bd"; : > "$W/bs"; : > "$W/md"; : > "$W/ms"; : > "$W/pd"; : > "$W/ps"
for _ in $(seq "$REPS"); do
    timed blob "$PD" >> "$W/bd"; timed blob "$PS" >> "$W/bs"
    timed pull "$PD" >> "$W/pd"; timed pull "$PS" >> "$W/ps"
    timed manifests "$PD" >> "$W/md"; timed manifests "$PS" >> "$W/ms"
done
BD=$(median < "$W/bd"); BS=$(median < "$W/bs"); PLD=$(median < "$W/pd"); PLS=$(median < "$W/ps"); MD=$(median < "$W/md"); MS=$(median < "$W/ms")
mbs() { echo "256 / $1" | bc -l | xargs printf '%.0f'; }
echo "| measure | direct | through the supervisor | ratio (supervisor/direct throughput) |"
echo "| --- | --- | --- | --- |"
echo "| 256 MiB blob GET (curl to /dev/null), MiB/s (median of $REPS) | $(mbs "$BD") | $(mbs "$BS") | $(echo "$BD / $BS" | bc -l | xargs printf '%.2f')× |"
echo "| image pull (skopeo copy, 256 MiB layer verified and written), MiB/s (median of $REPS) | $(mbs "$PLD") | $(mbs "$PLS") | $(echo "$PLD / $PLS" | bc -l | xargs printf '%.2f')× |"
echo "| 200 manifest GETs, one connection each, s (median of $REPS) | $(printf '%.2f' "$MD") | $(printf '%.2f' "$MS") | $(echo "$MD / $MS" | bc -l | xargs printf '%.2f')× |"
for p in $PIDS; do kill "$p"; done; PIDS=""; sleep 1

# 3. A cycle on the medium store: remove one tag next to the supervisor, read its report.
"$GEN" --out "$W/medium" --size medium > "$W/medium.json"
PM=$(port); config "$W/medium.yml" "$W/medium" "$PM"
"$BIN" supervise -- docker-registry serve "$W/medium.yml" 2>/dev/null & PIDS="$PIDS $!"
wait_up "$PM"
repo=$(cd "$W/medium/docker/registry/v2/repositories" && find . -path '*/_manifests/tags/*' -prune | head -1 | sed 's|^\./||; s|/_manifests/tags/|:|')
"$BIN" --root "$W/medium" --config "$W/medium.yml" --json "$repo" > "$W/cycle.json"
ro=$(tr -d '\n ' < "$W/cycle.json" | sed 's/.*"readonly_ms":\([0-9]*\).*/\1/')
cy=$(tr -d '\n ' < "$W/cycle.json" | sed 's/.*"cycle_ms":\([0-9]*\).*/\1/')
echo "| cycle on the medium store ($(cat "$W/medium.json")), removing $repo | read-only window $ro ms | whole cycle $cy ms | |"
