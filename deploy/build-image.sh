#!/usr/bin/env bash
# Build the modelserve serving image from a checkout, in one command:
#
#   bash deploy/build-image.sh            # CPU image  -> modelserve:cpu
#   bash deploy/build-image.sh --gpu      # CUDA image -> modelserve:gpu
#
# Options:
#   --gpu             the CUDA variant (onnxruntime-gpu + CUDA 13 / cuDNN 9 wheels)
#   --tag NAME        image tag (default modelserve:cpu or modelserve:gpu)
#   --local-base      skip the registry, use (or make) the debootstrap base image
#   --rebuild-base    make the debootstrap base image again even if it exists
#   --no-cache        passed to docker build
#   -q, --quiet       only errors and the summary (the build log goes to a file)
#
# Base image: python:3.11-slim-bookworm when a registry answers `docker pull` (or it is
# already here); otherwise a Debian bookworm base made with debootstrap (python3 3.11,
# python3-venv, ca-certificates, security updates) and `docker import`ed as
# modelserve-base:bookworm-py3.11, reused on later builds. MODELSERVE_BASE_IMAGE=IMAGE
# forces a base. pip inside the build reaches PyPI over the host network and trusts the
# host's CA bundle ($PIP_CERT, $SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UPSTREAM_BASE=python:3.11-slim-bookworm
LOCAL_BASE=${MODELSERVE_LOCAL_BASE:-modelserve-base:bookworm-py3.11}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PULL_TIMEOUT_S=${PULL_TIMEOUT_S:-120}

variant=cpu tag="" local_base=0 rebuild_base=0 quiet=0 build_flags=()
while (($#)); do
    case "$1" in
        --gpu) variant=gpu ;;
        --cpu) variant=cpu ;;
        --tag) tag=${2:?--tag needs a name}; shift ;;
        --tag=*) tag=${1#--tag=} ;;
        --local-base) local_base=1 ;;
        --rebuild-base) local_base=1 rebuild_base=1 ;;
        --no-cache) build_flags+=(--no-cache) ;;
        -q | --quiet) quiet=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-image.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
tag=${tag:-modelserve:$variant}

say() { printf '[build-image] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "needs root: $*"; fi; }

command -v docker >/dev/null || die "no docker client on PATH"
docker info >/dev/null 2>&1 || die "no Docker daemon answers (docker info failed); start dockerd first"
started=$(date +%s)

# ---------------------------------------------------------------- base image
make_local_base() {
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap (apt-get)"
        as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    local rootfs
    rootfs=$(as_root mktemp -d /var/tmp/modelserve-rootfs.XXXXXX)
    # shellcheck disable=SC2064
    trap "as_root umount '$rootfs/proc' 2>/dev/null || true; as_root rm -rf '$rootfs'" EXIT
    say "debootstrap: Debian bookworm (minbase + python3 python3-venv ca-certificates) from $DEBIAN_MIRROR"
    as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >"$logdir/debootstrap.log" 2>&1 \
        || { tail -20 "$logdir/debootstrap.log" >&2; die "debootstrap failed (log: $logdir/debootstrap.log)"; }
    local security=${DEBIAN_SECURITY_MIRROR:-${DEBIAN_MIRROR%/debian}/debian-security}
    as_root tee "$rootfs/etc/apt/sources.list" >/dev/null <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb $security bookworm-security main
EOF
    say "applying bookworm-updates and bookworm-security"
    as_root mount -t proc proc "$rootfs/proc"
    as_root chroot "$rootfs" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get -y -qq upgrade && apt-get clean' \
        >>"$logdir/debootstrap.log" 2>&1 || die "apt-get upgrade in the new base failed (log: $logdir/debootstrap.log)"
    as_root umount "$rootfs/proc"
    # Slim it down: package lists, caches, docs, man pages, translations.
    as_root sh -c "cd '$rootfs' && rm -rf var/lib/apt/lists/* var/cache/apt/* var/cache/debconf/*-old var/log/* \
        usr/share/doc/* usr/share/man/* usr/share/info/* usr/share/locale/* usr/share/lintian tmp/* && \
        printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' > etc/dpkg/dpkg.cfg.d/excludes"
    local py
    py=$(as_root chroot "$rootfs" python3 -c 'import sys, ssl, venv; print("%d.%d.%d" % sys.version_info[:3])') \
        || die "the new base has no working python3 with ssl and venv"
    [[ $py == 3.11.* ]] || die "the new base has Python $py, not 3.11"
    say "importing the base as $LOCAL_BASE (Python $py)"
    as_root tar --numeric-owner -C "$rootfs" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        --message "debootstrap bookworm minbase + python3 $py (modelserve deploy/build-image.sh)" \
        - "$LOCAL_BASE" >/dev/null
    as_root rm -rf "$rootfs"
    trap - EXIT
}

logdir=$(mktemp -d /tmp/modelserve-build.XXXXXX)
base_path=""
pull_error() { tail -1 "$logdir/pull.log" 2>/dev/null | sed 's/.*: //' | cut -c1-80; }
if [ -n "${MODELSERVE_BASE_IMAGE:-}" ]; then
    base=$MODELSERVE_BASE_IMAGE base_path="forced by MODELSERVE_BASE_IMAGE"
    docker image inspect "$base" >/dev/null 2>&1 || docker pull "$base" || die "cannot get base image $base"
elif ((!local_base)) && timeout "$PULL_TIMEOUT_S" docker pull -q "$UPSTREAM_BASE" >"$logdir/pull.log" 2>&1; then
    base=$UPSTREAM_BASE base_path="registry answered: pulled $UPSTREAM_BASE"
elif ((!local_base)) && docker image inspect "$UPSTREAM_BASE" >/dev/null 2>&1; then
    base=$UPSTREAM_BASE base_path="no registry (docker pull $UPSTREAM_BASE: $(pull_error)); using the $UPSTREAM_BASE already here"
else
    why=$( ((local_base)) && echo "--local-base" || echo "no registry (docker pull $UPSTREAM_BASE: $(pull_error))")
    base=$LOCAL_BASE
    if ((!rebuild_base)) && docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
        base_path="$why; reusing the debootstrap base $LOCAL_BASE made $(docker image inspect -f '{{.Created}}' "$LOCAL_BASE" | cut -c1-19)"
    else
        say "$why; making a local Debian base with debootstrap (a few minutes, once)"
        t0=$(date +%s)
        make_local_base
        base_path="$why; made the debootstrap base $LOCAL_BASE in $(($(date +%s) - t0))s"
    fi
fi
say "base image: $base ($base_path)"

# ---------------------------------------------------------------- build context
# A small context of exactly what the image needs (no .venv, .git, training data).
ctx=$(mktemp -d /tmp/modelserve-context.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp -p "$ROOT/pyproject.toml" "$ctx/"
if [ -f "$ROOT/README.md" ]; then
    cp -p "$ROOT/README.md" "$ctx/"
else
    say "warning: no README.md in the checkout (pyproject.toml's readme); using a placeholder for the package metadata"
    echo "# modelserve" >"$ctx/README.md"
fi
mkdir -p "$ctx/deploy"
cp -p "$ROOT/deploy/Dockerfile" "$ROOT/deploy/healthcheck.py" "$ROOT/deploy/pyproject_requirements.py" "$ROOT/deploy/requirements-gpu.txt" "$ctx/deploy/"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' -cf - service | tar -C "$ctx" -xf -
mkdir -p "$ctx/models"
if [ -d "$ROOT/models" ]; then
    tar -C "$ROOT" --exclude='.staging-*' --exclude=__pycache__ -cf - models | tar -C "$ctx" -xf -
fi
served=()
for current in "$ctx"/models/*/CURRENT; do
    [ -f "$current" ] || continue
    name=$(basename "$(dirname "$current")") version=$(tr -d '[:space:]' <"$current")
    [ -f "$ctx/models/$name/$version/model.onnx" ] && served+=("$name v$version")
done
if ((${#served[@]})); then
    say "models baked in: ${served[*]}"
else
    say "warning: models/ has no model with a CURRENT version: the image will only serve a registry mounted at run time (-v ...:/models:ro -e MODELSERVE_MODEL_ROOT=/models)"
fi
ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
if [ -s "$ca" ]; then cp "$ca" "$ctx/build-ca.crt"; else : >"$ctx/build-ca.crt"; fi

# ---------------------------------------------------------------- build
build_args=(--build-arg "BASE_IMAGE=$base" --build-arg "VARIANT=$variant")
[ -n "${PIP_INDEX_URL:-}" ] && [[ $PIP_INDEX_URL == http* ]] && build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
say "building $tag ($variant) with docker build --network host"
t0=$(date +%s)
build=(docker build --network host --pull=false -f "$ctx/deploy/Dockerfile" -t "$tag" "${build_args[@]}" "${build_flags[@]}" "$ctx")
if ((quiet)); then
    "${build[@]}" >"$logdir/build.log" 2>&1 || { tail -40 "$logdir/build.log" >&2; die "docker build failed (log: $logdir/build.log)"; }
else
    "${build[@]}" 2>&1 | tee "$logdir/build.log"
fi
build_s=$(($(date +%s) - t0))
size=$(docker image inspect -f '{{.Size}}' "$tag")
say "built $tag: $((size / 1000000)) MB, docker build ${build_s}s, total $(($(date +%s) - started))s; base: $base_path"
say "run it:  docker run --rm -p 3000:3000 $tag"
rm -rf "$logdir"
