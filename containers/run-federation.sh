#!/usr/bin/env bash
# Builds the medfed image and runs the example three-site federation in containers on this machine:
# one server and three site containers, host networking on 127.0.0.1, the built-in synthetic data
# (examples/federation.toml, examples/sites/site-{a,b,c}.toml). Not part of `make test`.
#
#   containers/run-federation.sh [WORK]        # WORK (default runs/containers): certs/, state/
#
# Environment: IMAGE (medfed:latest), BASE (medfed-base:bookworm; built with build-base.sh when
# missing), TORCH / TORCH_INDEX (the Dockerfile's; by default a torch wheel found in
# containers/wheels/ or PIP_FIND_LINKS is used, else PyTorch's CPU index), DOCKER (docker).
# Prints the image size, the build time and the federation's test metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${1:-runs/containers}")
IMAGE=${IMAGE:-medfed:latest}
BASE=${BASE:-medfed-base:bookworm}
DOCKER=${DOCKER:-docker}
SITES=(site-a site-b site-c)
export DOCKER_BUILDKIT=1

if ! $DOCKER image inspect "$BASE" >/dev/null 2>&1; then
    [ "$BASE" = medfed-base:bookworm ] || { echo "base image $BASE not found" >&2; exit 2; }
    containers/build-base.sh "$BASE"
fi

# A torch wheel on disk (this machine's CPU build) saves the download; a proxy's CA for pip.
build_args=(--build-arg "BASE=$BASE")
wheel=$(ls containers/wheels/torch-*.whl ${PIP_FIND_LINKS:+"$PIP_FIND_LINKS"/torch-*cpu*.whl} \
        2>/dev/null | head -1 || true)
if [ -z "${TORCH:-}" ] && [ -n "$wheel" ]; then
    [ -f "containers/wheels/$(basename "$wheel")" ] || cp "$wheel" containers/wheels/
    build_args+=(--build-arg "TORCH=/wheels/$(basename "$wheel")" --build-arg TORCH_INDEX=)
elif [ -n "${TORCH:-}" ]; then
    build_args+=(--build-arg "TORCH=$TORCH" --build-arg "TORCH_INDEX=${TORCH_INDEX-}")
fi
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    cp "$PIP_CERT" containers/wheels/ca-certificates.crt
fi

start=$(date +%s)
$DOCKER build --network host -f containers/Dockerfile "${build_args[@]}" -t "$IMAGE" .
build_seconds=$(( $(date +%s) - start ))
size=$($DOCKER image inspect "$IMAGE" --format '{{.Size}}')

# Certificates and the server's state on the host, owned by the image's user (uid 10001).
rm -rf "$WORK" && mkdir -p "$WORK/certs" "$WORK/state"
chown -R 10001 "$WORK" 2>/dev/null || chmod 0777 "$WORK/certs" "$WORK/state"
run() { $DOCKER run --rm --network host --user 10001 -v "$WORK/certs:/certs" "$@"; }
run "$IMAGE" certs init --out /certs >/dev/null
for name in server "${SITES[@]}"; do run "$IMAGE" certs issue --name "$name" --out /certs >/dev/null; done

examples=$(realpath examples)
containers=()
cleanup() { for c in "${containers[@]}"; do $DOCKER rm -f "$c" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT
fed_start=$(date +%s)
$DOCKER run -d --name medfed-server --network host --user 10001 \
    -v "$WORK/certs:/certs:ro" -v "$examples/federation.toml:/config/federation.toml:ro" \
    -v "$WORK/state:/state" "$IMAGE" \
    server --config /config/federation.toml --certs /certs --state /state >/dev/null
containers+=(medfed-server)
for site in "${SITES[@]}"; do
    $DOCKER volume create "medfed-$site-state" >/dev/null
    $DOCKER run -d --name "medfed-$site" --network host \
        -v "$WORK/certs:/certs:ro" -v "$examples/sites/$site.toml:/config/site.toml:ro" \
        -v "medfed-$site-state:/state" "$IMAGE" \
        client --server 127.0.0.1:50051 --certs /certs --site-config /config/site.toml \
        --state /state >/dev/null
    containers+=("medfed-$site")
done
code=$($DOCKER wait medfed-server)
fed_seconds=$(( $(date +%s) - fed_start ))
$DOCKER logs medfed-server 2>&1 | tail -n 15
for site in "${SITES[@]}"; do $DOCKER wait "medfed-$site" >/dev/null || true; done
echo "image $IMAGE: $(( size / 1000000 )) MB; build ${build_seconds} s; federation ${fed_seconds} s (server exit $code)"
python3 - "$WORK/state/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
t = s["test"]
print("test:", ", ".join(f"{k} {t[k]:.3f}" for k in ("auc", "accuracy", "sensitivity", "specificity")
                         if t.get(k) is not None), f"(n = {s['n_test']}); files:", ", ".join(s["files"]))
PY
exit "$code"
