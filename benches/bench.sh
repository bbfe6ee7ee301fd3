#!/bin/sh
# regclean benchmark: generates synthetic stores and prints a Markdown table of medians and
# ratios against baselines measured in the same run (find, rm -rf, the registry's own
# garbage-collect). Usage:
#   benches/bench.sh [SIZE...]        SIZE: small, medium (default: small medium), large (opt-in)
# Environment: BENCH_REPS (default 3), BENCH_DIR (work directory, default a new one under
# /var/tmp), REGISTRY_BIN (default docker-registry or registry on PATH).
# Needs: /usr/bin/time (Debian package time), the registry binary, cargo.
set -eu
cd "$(dirname "$0")/.."
SIZES=${*:-small medium}
REPS=${BENCH_REPS:-3}
WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/regclean-bench.XXXXXX)}
REG=${REGISTRY_BIN:-$(command -v docker-registry || command -v registry)}
cargo build --release --bins -q
BIN=$PWD/target/release/regclean
GEN=$PWD/target/release/regclean-genstore
mkdir -p "$WORK"
T=$WORK/time.out

echo "# regclean benchmark"
echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r), $(df -T "$WORK" | awk 'NR==2{print $2}') file system; $REPS runs per figure after one warm-up (page cache warm); times are medians (min–max)."
echo "Registry: $($REG --version 2>&1 | head -1). Date: $(date -u +%Y-%m-%d)."
echo
echo "| store | measurement | command | wall s, median (min–max) | max RSS MiB | ratio |"
echo "| --- | --- | --- | --- | --- | --- |"

# run_timed PREP CMD: runs PREP (untimed) then CMD under /usr/bin/time, REPS times (plus a
# warm-up when PREP is empty); sets MED, MIN, MAX (seconds) and RSS (MiB, median).
run_timed() {
    prep=$1; shift
    : > "$WORK/walls"; : > "$WORK/rss"
    if [ -z "$prep" ]; then sh -c "$*" >/dev/null 2>&1 || true; fi
    i=0
    while [ "$i" -lt "$REPS" ]; do
        [ -n "$prep" ] && sh -c "$prep" >/dev/null 2>&1
        /usr/bin/time -f "%e %M" -o "$T" sh -c "$*" >/dev/null 2>"$WORK/err" || { echo "FAILED: $*" >&2; cat "$WORK/err" >&2; exit 1; }
        awk '{print $1}' "$T" >> "$WORK/walls"; awk '{print $2}' "$T" >> "$WORK/rss"
        i=$((i + 1))
    done
    MED=$(sort -g "$WORK/walls" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    MIN=$(sort -g "$WORK/walls" | head -1); MAX=$(sort -g "$WORK/walls" | tail -1)
    RSS=$(sort -g "$WORK/rss" | awk '{a[NR]=$1} END{printf "%.0f", a[int((NR+1)/2)]/1024}')
}

row() { # store, measurement, command label, ratio text
    echo "| $1 | $2 | \`$3\` | $MED ($MIN–$MAX) | $RSS | $4 |"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f×", a/b; else print "-" }'; }

for size in $SIZES; do
    S=$WORK/$size
    V2=$S/docker/registry/v2
    [ -d "$S" ] || "$GEN" --out "$S" --size "$size" > "$WORK/$size.gen.json"
    printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\n' "$S" > "$WORK/$size.yml"
    files=$(find "$S" -type f | wc -l)
    echo "| $size | store | $(cat "$WORK/$size.gen.json") | | | |"

    # 1. Inventory and plan (dry run with retention, reachability and bytes to free).
    run_timed "" "find '$S' -type f | wc -l"; FIND=$MED; row "$size" "baseline: find" "find ROOT -type f \| wc -l" "1.00×"
    run_timed "" "'$REG' garbage-collect --dry-run '$WORK/$size.yml'"; REGDRY=$MED
    row "$size" "baseline: registry GC dry run" "registry garbage-collect --dry-run" "1.00×"
    run_timed "" "'$BIN' --root '$S' --config /dev/null --dry-run --all --keep-last 5"; RC=$MED
    row "$size" "inventory + plan + GC prediction" "regclean --dry-run --all --keep-last 5" "$(ratio "$RC" "$FIND") of find, $(ratio "$RC" "$REGDRY") of registry dry run"
    run_timed "" "RAYON_NUM_THREADS=2 '$BIN' --root '$S' --config /dev/null --dry-run --all --keep-last 5"; RC2=$MED
    row "$size" "same, 2 threads (default: 4 per core)" "RAYON_NUM_THREADS=2 regclean --dry-run ..." "$(ratio "$RC2" "$RC") of default"
    run_timed "" "RAYON_NUM_THREADS=1 '$BIN' --root '$S' --config /dev/null --dry-run --all --keep-last 5"
    row "$size" "same, 1 thread" "RAYON_NUM_THREADS=1 regclean --dry-run ..." "$(ratio "$MED" "$RC2") of 2 threads"
    echo "| $size | per million files | regclean dry run | $(awk -v t="$RC" -v f="$files" 'BEGIN{printf "%.2f", t*1e6/f}') s | | |"
    run_timed "" "'$BIN' --root '$S' --config /dev/null --check"; CHK=$MED
    row "$size" "integrity check" "regclean --check" "$(ratio "$CHK" "$FIND") of find; $(awk -v t="$CHK" -v f="$files" 'BEGIN{printf "%.2f", t*1e6/f}') s per million files"
    run_timed "" "'$BIN' --root '$S' --config /dev/null --check --verify-content"
    row "$size" "integrity check, hashing every blob" "regclean --check --verify-content" "$(ratio "$MED" "$CHK") of --check"

    # 2. Removal of many repositories against rm -rf of the same directories.
    C=$WORK/$size.copy
    run_timed "rm -rf '$C'; cp -a '$S' '$C'; sync" "rm -rf '$C'/docker/registry/v2/repositories/team*"; RM=$MED
    row "$size" "baseline: rm -rf" "rm -rf repositories/team*" "1.00×"
    run_timed "rm -rf '$C'; cp -a '$S' '$C'; sync" "'$BIN' --root '$C' --config /dev/null --no-gc 'team*/**'"
    row "$size" "remove $(ls "$V2/repositories" | grep -c '^team') namespaces of repositories" "regclean --no-gc 'team*/**'" "$(ratio "$MED" "$RM") of rm -rf"

    # 3. Full clean against the usual script (rm -rf of tag directories, then the registry's
    #    garbage-collect --delete-untagged), on a store without multi-arch images (where -m is
    #    safe, so the comparison is fair).
    N=$WORK/$size.nomulti
    [ -d "$N" ] || "$GEN" --out "$N" --size "$size" --multiarch-percent 0 --seed 2 > /dev/null
    printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\n' "$C" > "$WORK/$size.copy.yml"
    (cd "$N/docker/registry/v2/repositories" && find . -path '*/_manifests/tags/build-*' -prune | sed 's|^\./||') > "$WORK/$size.tagdirs"
    run_timed "rm -rf '$C'; cp -a '$N' '$C'; sync" "cd '$C/docker/registry/v2/repositories' && xargs rm -rf < '$WORK/$size.tagdirs' && '$REG' garbage-collect --delete-untagged '$WORK/$size.copy.yml'"; SCRIPT=$MED
    row "$size" "baseline: rm -rf tags + registry GC -m" "xargs rm -rf < tagdirs; registry garbage-collect -m" "1.00×"
    run_timed "rm -rf '$C'; cp -a '$N' '$C'; sync" "'$BIN' --root '$C' --config /dev/null --registry-bin '$REG' --json 'team*/**:build-*' > '$WORK/$size.full.json'"
    row "$size" "full clean: remove, prune, preflight, cross-checked GC" "regclean 'team*/**:build-*'" "$(ratio "$MED" "$SCRIPT") of the script"
    phases=$(tr -d '\n ' < "$WORK/$size.full.json" | sed 's/.*"timings_ms":{\([^}]*\)}.*/\1/' | tr ',' ' ' | sed 's/"//g')
    echo "| $size | full clean, where the time goes (ms, last run) | $phases | | | |"
    rm -rf "$C"
done
