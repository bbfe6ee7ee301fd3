#!/bin/sh
# regclean benchmark: generates synthetic stores and prints a Markdown table of medians and
# ratios against baselines measured in the same run (find, rm -rf, the registry's own
# garbage-collect, the usual rm -rf + garbage-collect script against a native full clean). Usage:
#   benches/bench.sh [SIZE...]        SIZE: small, medium (default: small medium), large (opt-in)
# Environment: BENCH_STEPS (the numbered steps to run, default "1 2 3 4"), BENCH_REPS (default 3), BENCH_DIR (work directory, default a new one under
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

# time_once KEY CMD: runs CMD under /usr/bin/time; appends its wall seconds to $WORK/walls.KEY
# and its max RSS (KiB) to $WORK/rss.KEY. A failing CMD stops the benchmark.
time_once() {
    key=$1; shift
    /usr/bin/time -f "%e %M" -o "$T" sh -c "$*" >/dev/null 2>"$WORK/err" || { echo "FAILED: $*" >&2; cat "$WORK/err" >&2; exit 1; }
    awk '{print $1}' "$T" >> "$WORK/walls.$key"; awk '{print $2}' "$T" >> "$WORK/rss.$key"
}

# summarize KEY: sets MED, MIN, MAX (seconds), RSS (MiB, median) and RSSK (KiB, median) from
# what time_once recorded under KEY.
summarize() {
    MED=$(sort -g "$WORK/walls.$1" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    MIN=$(sort -g "$WORK/walls.$1" | head -1); MAX=$(sort -g "$WORK/walls.$1" | tail -1)
    RSSK=$(sort -g "$WORK/rss.$1" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    RSS=$(awk -v k="$RSSK" 'BEGIN{printf "%.0f", k/1024}')
}

# run_timed PREP CMD: runs PREP (untimed) then CMD under /usr/bin/time, REPS times (plus a
# warm-up when PREP is empty); sets MED, MIN, MAX (seconds) and RSS (MiB, median).
run_timed() {
    prep=$1; shift
    : > "$WORK/walls.t"; : > "$WORK/rss.t"
    if [ -z "$prep" ]; then sh -c "$*" >/dev/null 2>&1 || true; fi
    i=0
    while [ "$i" -lt "$REPS" ]; do
        [ -n "$prep" ] && sh -c "$prep" >/dev/null 2>&1
        time_once t "$*"
        i=$((i + 1))
    done
    summarize t
}

# run_alternated PREP CMD_A CMD_B POST: A, B, A, B... REPS times each, PREP (untimed) before
# every run, so that both see the same fresh store and the same machine drift; POST (untimed)
# after every run, its output appended to $WORK/post.a or $WORK/post.b (e.g. what is left).
# Results via `summarize a` / `summarize b`; PAIRS: the median (min–max) of the ratios B/A,
# run by run.
run_alternated() {
    prep=$1; cmd_a=$2; cmd_b=$3; post=$4
    : > "$WORK/walls.a"; : > "$WORK/rss.a"; : > "$WORK/walls.b"; : > "$WORK/rss.b"
    : > "$WORK/post.a"; : > "$WORK/post.b"
    i=0
    while [ "$i" -lt "$REPS" ]; do
        for k in a b; do
            sh -c "$prep" >/dev/null 2>&1
            if [ "$k" = a ]; then time_once a "$cmd_a"; else time_once b "$cmd_b"; fi
            sh -c "$post" >> "$WORK/post.$k" 2>&1
        done
        i=$((i + 1))
    done
    PAIRS=$(paste "$WORK/walls.a" "$WORK/walls.b" | awk '$1 > 0 {print $2/$1}' | sort -g | awk '{a[NR]=$1} END{printf "%.2f× (%.2f–%.2f)", a[int((NR+1)/2)], a[1], a[NR]}')
}

row() { # store, measurement, command label, ratio text
    echo "| $1 | $2 | \`$3\` | $MED ($MIN–$MAX) | $RSS | $4 |"
}

# per_manifest RSS_KIB MANIFESTS: peak RSS per manifest, in KiB.
per_manifest() { awk -v k="$1" -v m="$2" 'BEGIN{ if (m > 0) printf "%.2f KiB", k/m; else print "-" }'; }

# tag_dirs REPORT: the tag directories (relative to repositories/) that a regclean --json
# report removes, one a line (the report is pretty-printed: one field a line).
tag_dirs() {
    awk '/^  "removals": \[/{r=1; next} r && /^  \]/{r=0}
         r && /"repo":/{split($0, a, "\""); repo=a[4]}
         r && /"kind":/{split($0, a, "\""); kind=a[4]}
         r && /"name":/{split($0, a, "\""); if (kind == "tag") print repo "/_manifests/tags/" a[4]}' "$1"
}

# left_counts FILE: "blobs+revisions" per run, from the POST output of run_alternated.
left_counts() { awk '{printf "%s%s+%s", (NR > 1 ? ", " : ""), $1, $2}' "$1"; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f×", a/b; else print "-" }'; }

STEPS=${BENCH_STEPS:-1 2 3 4}
# want N: is step N asked for?
want() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

for size in $SIZES; do
    S=$WORK/$size
    V2=$S/docker/registry/v2
    [ -d "$S" ] || "$GEN" --out "$S" --size "$size" > "$WORK/$size.gen.json"
    printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\n' "$S" > "$WORK/$size.yml"
    files=$(find "$S" -type f | wc -l)
    echo "| $size | store | $(cat "$WORK/$size.gen.json") | | | |"

    N=$WORK/$size.nomulti
    C=$WORK/$size.copy

    # 1. Inventory and plan (dry run with retention, reachability and bytes to free).
    if want 1; then
    run_timed "" "find '$S' -type f | wc -l"; FIND=$MED; row "$size" "baseline: find" "find ROOT -type f \| wc -l" "1.00×"
    run_timed "" "'$REG' garbage-collect --dry-run '$WORK/$size.yml'"; REGDRY=$MED
    row "$size" "baseline: registry GC dry run" "registry garbage-collect --dry-run" "1.00×"
    run_timed "" "'$BIN' --root '$S' --config /dev/null --dry-run --all --keep-last 5"; RC=$MED
    row "$size" "inventory + plan + GC prediction" "regclean --dry-run --all --keep-last 5" "$(ratio "$RC" "$FIND") of find, $(ratio "$RC" "$REGDRY") of registry dry run"
    man=$(sed 's/.*"manifests":\([0-9]*\).*/\1/' "$WORK/$size.gen.json")
    echo "| $size | peak RSS per manifest | regclean dry run | $(per_manifest "$RSSK" "$man") | | |"
    eval "DRY_RSSK_$size=$RSSK DRY_MAN_$size=$man"
    run_timed "" "RAYON_NUM_THREADS=2 '$BIN' --root '$S' --config /dev/null --dry-run --all --keep-last 5"; RC2=$MED
    row "$size" "same, 2 threads (default: 4 per core)" "RAYON_NUM_THREADS=2 regclean --dry-run ..." "$(ratio "$RC2" "$RC") of default"
    run_timed "" "RAYON_NUM_THREADS=1 '$BIN' --root '$S' --config /dev/null --dry-run --all --keep-last 5"
    row "$size" "same, 1 thread" "RAYON_NUM_THREADS=1 regclean --dry-run ..." "$(ratio "$MED" "$RC2") of 2 threads"
    echo "| $size | per million files | regclean dry run | $(awk -v t="$RC" -v f="$files" 'BEGIN{printf "%.2f", t*1e6/f}') s | | |"
    run_timed "" "'$BIN' --root '$S' --config /dev/null --check"; CHK=$MED
    row "$size" "integrity check" "regclean --check" "$(ratio "$CHK" "$FIND") of find; $(awk -v t="$CHK" -v f="$files" 'BEGIN{printf "%.2f", t*1e6/f}') s per million files"
    run_timed "" "'$BIN' --root '$S' --config /dev/null --check --verify-content"
    row "$size" "integrity check, hashing every blob" "regclean --check --verify-content" "$(ratio "$MED" "$CHK") of --check"

    fi

    # 2. Removal of many repositories against rm -rf of the same directories.
    if want 2; then
    run_timed "rm -rf '$C'; cp -a '$S' '$C'; sync" "rm -rf '$C'/docker/registry/v2/repositories/team*"; RM=$MED
    row "$size" "baseline: rm -rf" "rm -rf repositories/team*" "1.00×"
    run_timed "rm -rf '$C'; cp -a '$S' '$C'; sync" "'$BIN' --root '$C' --config /dev/null --no-gc 'team*/**'"
    row "$size" "remove $(ls "$V2/repositories" | grep -c '^team') namespaces of repositories" "regclean --no-gc 'team*/**'" "$(ratio "$MED" "$RM") of rm -rf"
    fi

    # 3. Full clean against the usual script (rm -rf of tag directories, then the registry's
    #    garbage-collect --delete-untagged), on a store without multi-arch images (where -m is
    #    safe, so the comparison is fair).
    [ -f "$WORK/$size.nomulti.gen.json" ] || { rm -rf "$N"; "$GEN" --out "$N" --size "$size" --multiarch-percent 0 --seed 2 > "$WORK/$size.nomulti.gen.json"; }
    printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\n' "$C" > "$WORK/$size.copy.yml"
    if want 3; then
    (cd "$N/docker/registry/v2/repositories" && find . -path '*/_manifests/tags/build-*' -prune | sed 's|^\./||') > "$WORK/$size.tagdirs"
    run_timed "rm -rf '$C'; cp -a '$N' '$C'; sync" "cd '$C/docker/registry/v2/repositories' && xargs rm -rf < '$WORK/$size.tagdirs' && '$REG' garbage-collect --delete-untagged '$WORK/$size.copy.yml'"; SCRIPT=$MED
    row "$size" "baseline: rm -rf tags + registry GC -m" "xargs rm -rf < tagdirs; registry garbage-collect -m" "1.00×"
    run_timed "rm -rf '$C'; cp -a '$N' '$C'; sync" "'$BIN' --root '$C' --config /dev/null --registry-bin '$REG' --json 'team*/**:build-*' > '$WORK/$size.full.json'"
    row "$size" "full clean: remove, prune, preflight, cross-checked GC" "regclean 'team*/**:build-*'" "$(ratio "$MED" "$SCRIPT") of the script"
    phases=$(tr -d '\n ' < "$WORK/$size.full.json" | sed 's/.*"timings_ms":{\([^}]*\)}.*/\1/' | tr ',' ' ' | sed 's/"//g')
    echo "| $size | full clean, where the time goes (ms, last run) | $phases | | | |"
    fi

    # 4. Full clean with the native collector against the script a user would otherwise write
    #    for the same request: remove the older half of every repository's tags (the generator
    #    gives medium and large 20 tags per repository, so --keep-last 10; small has 10, so
    #    --keep-last 5), prune, collect. The script removes exactly the tag directories that
    #    regclean's dry run of the same request lists, then runs the registry's
    #    garbage-collect --delete-untagged. Same store without multi-arch images as in 3.
    #    (2.8's --delete-untagged deletes the untagged children of indexes), a fresh copy
    #    before every run, alternated.
    if want 4; then
    echo "| $size | store without multi-arch images (3. and 4.) | $(cat "$WORK/$size.nomulti.gen.json") | | | |"
    tags=$(sed 's/.*"tags":\([0-9]*\).*/\1/' "$WORK/$size.nomulti.gen.json")
    repos=$(sed 's/.*"repos":\([0-9]*\).*/\1/' "$WORK/$size.nomulti.gen.json")
    man=$(sed 's/.*"manifests":\([0-9]*\).*/\1/' "$WORK/$size.nomulti.gen.json")
    KEEP=$((tags / repos / 2))
    "$BIN" --root "$N" --config /dev/null --dry-run --json --all --keep-last "$KEEP" > "$WORK/$size.keep.json"
    tag_dirs "$WORK/$size.keep.json" > "$WORK/$size.keep.tagdirs"
    left="find '$C/docker/registry/v2/blobs' -name data -type f | wc -l | tr '\\n' ' '; find '$C/docker/registry/v2/repositories' -path '*/_manifests/revisions/sha256/*/link' | wc -l"
    run_alternated "rm -rf '$C'; cp -a '$N' '$C'; sync" \
        "cd '$C/docker/registry/v2/repositories' && xargs rm -rf < '$WORK/$size.keep.tagdirs' && '$REG' garbage-collect --delete-untagged '$WORK/$size.copy.yml'" \
        "'$BIN' --root '$C' --config /dev/null --collector native --json --all --keep-last $KEEP > '$WORK/$size.native.json'" \
        "$left"
    summarize a; SCRIPT=$MED
    row "$size" "baseline: rm -rf of the same $(wc -l < "$WORK/$size.keep.tagdirs") tags + registry GC -m" "xargs rm -rf < tagdirs; registry garbage-collect -m" "1.00×"
    summarize b
    row "$size" "full clean, native collector: remove, prune, sweep" "regclean --collector native --all --keep-last $KEEP" "$(ratio "$MED" "$SCRIPT") of the script (run by run: $PAIRS)"
    echo "| $size | peak RSS per manifest | regclean native full clean | $(per_manifest "$RSSK" "$man") | | |"
    eval "NAT_RSSK_$size=$RSSK NAT_MAN_$size=$man"
    echo "| $size | left after each run: blob files+revision links (script / regclean) | $(left_counts "$WORK/post.a") / $(left_counts "$WORK/post.b") | | | |"
    freed=$(tr -d '\n ' < "$WORK/$size.native.json" | sed 's/.*"predicted_blobs":\([0-9]*\),"predicted_bytes":\([0-9]*\),"freed_blobs":\([0-9]*\),"freed_bytes":\([0-9]*\).*/predicted \1 blobs, \2 bytes; freed \3 blobs, \4 bytes/')
    echo "| $size | native collector, last run | $freed | | | |"
    phases=$(tr -d '\n ' < "$WORK/$size.native.json" | sed 's/.*"timings_ms":{\([^}]*\)}.*/\1/' | tr ',' ' ' | sed 's/"//g')
    echo "| $size | native full clean, where the time goes (ms, last run) | $phases | | | |"
    fi
    rm -rf "$C"
done

# Memory: what a manifest costs beyond the fixed part, from the difference between two sizes.
if [ -n "${DRY_MAN_small:-}" ] && [ -n "${DRY_MAN_medium:-}" ] && [ -n "${NAT_MAN_small:-}" ] && [ -n "${NAT_MAN_medium:-}" ]; then
    echo "| small→medium | peak RSS per added manifest | regclean dry run | $(awk -v a="$DRY_RSSK_small" -v b="$DRY_RSSK_medium" -v m="$DRY_MAN_small" -v n="$DRY_MAN_medium" 'BEGIN{printf "%.2f KiB", (b-a)/(n-m)}') | | |"
    echo "| small→medium | peak RSS per added manifest | regclean native full clean | $(awk -v a="$NAT_RSSK_small" -v b="$NAT_RSSK_medium" -v m="$NAT_MAN_small" -v n="$NAT_MAN_medium" 'BEGIN{printf "%.2f KiB", (b-a)/(n-m)}') | | |"
fi
