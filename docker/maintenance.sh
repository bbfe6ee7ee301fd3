#!/bin/sh
# A maintenance window for a registry container built from regclean's Dockerfile:
#   1. dry run (what would go, how many bytes it frees)   2. removal (safe while serving)
#   3. restart, so the entrypoint hook prunes and collects before serving
#   4. integrity check of every remaining image
# Stops at the first failing step and says which, and what state the registry is in.
#
# Usage: docker/maintenance.sh CONTAINER [REGCLEAN TARGETS AND OPTIONS...]
#   docker/maintenance.sh registry 'app:pr-*' old/repo
#   docker/maintenance.sh registry --all --keep-last 10 --keep '^v[0-9]'
# The container must run with REGCLEAN_GC=true (see docker/compose.yml) so that step 3 collects.
# Environment: DOCKER (default docker; podman works too), RESTART_TIMEOUT (seconds, default 60).
set -eu
if [ "$#" -lt 2 ]; then
    echo "usage: $0 CONTAINER TARGET-OR-OPTION..." >&2
    exit 2
fi
C=$1
shift
D=${DOCKER:-docker}

step() { echo "==> $*"; }
fail() { # step, exit code, state
    echo "maintenance: FAILED at step '$1' (exit $2). $3" >&2
    exit "$2"
}

step "1/4 dry run"
$D exec "$C" regclean --dry-run "$@" || fail "dry run" $? "Nothing was changed."

step "2/4 removal (the registry keeps serving)"
$D exec "$C" regclean --no-gc "$@" || fail "removal" $? "Each removal is atomic: what the output lists as removed is gone, the rest is intact; rerun to finish."

step "3/4 restart: the entrypoint hook prunes and collects before the registry serves"
since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
$D restart "$C" >/dev/null || fail "restart" $? "Tags are removed; the disk is not freed yet. Check the container."
# The hook runs first; the registry replaces it as PID 1 once the clean is over.
i=0
until $D exec "$C" sh -c 'tr "\0" " " < /proc/1/cmdline' 2>/dev/null | grep -q ' serve'; do
    i=$((i + 1))
    [ "$i" -ge "${RESTART_TIMEOUT:-60}" ] && fail "restart" 1 "The registry did not start within ${RESTART_TIMEOUT:-60}s; see its logs."
    sleep 1
done
logs=$($D logs --since "$since" "$C" 2>&1 || true)
case "$logs" in
    *"CLEAN FAILED"*) fail "collection" 1 "The hook's clean failed (container logs below); the registry serves, the disk is not freed.
$logs" ;;
    *"clean done"*) echo "$logs" | grep 'regclean' || true ;;
    *) fail "collection" 1 "The hook did not run a clean: start the container with REGCLEAN_GC=true." ;;
esac

step "4/4 integrity check"
$D exec "$C" regclean --check || fail "integrity check" $? "The clean is done; the findings above were broken before or by something else."
echo "maintenance: done"
