#!/usr/bin/env bash
# N modelserve replicas behind HAProxy on this Docker host (compose.yaml beside this script).
#
#   bash deploy/replicas/replicas.sh up [N]     # start or rescale to N replicas (default 3), wait until all are UP
#   bash deploy/replicas/replicas.sh status     # HAProxy's view: each replica's state, requests, retries
#   bash deploy/replicas/replicas.sh down       # stop (each replica drains its requests first)
#
# Builds modelserve:cpu with deploy/build-image.sh when MODELSERVE_IMAGE does not exist yet,
# and the balancer image on the same base. Settings: see compose.yaml (MODELSERVE_REGISTRY,
# MODELSERVE_LB_PORT, ...); MODELSERVE_PROJECT names the Compose project (default modelserve).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PROJECT=${MODELSERVE_PROJECT:-modelserve}
export MODELSERVE_IMAGE=${MODELSERVE_IMAGE:-modelserve:cpu}
STATS="http://127.0.0.1:${MODELSERVE_LB_STATS_PORT:-8404}/stats;csv"
READY_TIMEOUT_S=${READY_TIMEOUT_S:-180}

say() { printf '[replicas] %s\n' "$*" >&2; }
compose() { docker-compose --project-name "$PROJECT" --file "$HERE/compose.yaml" "$@"; }

pick_base() {  # the base deploy/build-image.sh used: the debootstrap one, else python:3.11-slim-bookworm
    local candidate
    for candidate in ${MODELSERVE_BASE_IMAGE:-} modelserve-base:bookworm-py3.11 python:3.11-slim-bookworm; do
        docker image inspect "$candidate" >/dev/null 2>&1 && { echo "$candidate"; return; }
    done
    say "no base image for the balancer (run deploy/build-image.sh first)"; exit 1
}

servers() {  # name status address requests retries, one line per replica slot in use
    python3 -c 'import csv, io, sys, urllib.request
rows = csv.DictReader(io.StringIO(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().lstrip("# ")))
for r in rows:
    if r["pxname"] == "replicas" and r["svname"] != "BACKEND" and r["addr"]:
        print(r["svname"], r["status"].replace(" ", "_"), r["addr"], r["stot"], r["wretr"])' "$STATS"
}

up() {
    local n=${1:-3} started=$SECONDS
    docker image inspect "$MODELSERVE_IMAGE" >/dev/null 2>&1 || bash "$ROOT/deploy/build-image.sh" --quiet --tag "$MODELSERVE_IMAGE"
    MODELSERVE_BASE_IMAGE=$(pick_base) compose up --detach --build --scale "modelserve=$n" >&2
    say "waiting until HAProxy has $n replicas UP"
    until [ "$(servers 2>/dev/null | awk '$2 == "UP"' | wc -l)" -eq "$n" ]; do
        ((SECONDS - started < READY_TIMEOUT_S)) || { compose logs --tail 30 >&2; say "not all UP after ${READY_TIMEOUT_S}s"; exit 1; }
        sleep 1
    done
    say "$n replicas UP after $((SECONDS - started))s: http://${MODELSERVE_LB_BIND:-127.0.0.1}:${MODELSERVE_LB_PORT:-8080}, gRPC ${MODELSERVE_LB_BIND:-127.0.0.1}:${MODELSERVE_LB_GRPC_PORT:-8081} (stats: ${STATS%;csv})"
}

case "${1:-}" in
    up) up "${2:-3}" ;;
    status) echo "slot status address requests retries"; servers ;;
    down) compose down --timeout 130 ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
