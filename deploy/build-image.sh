#!/usr/bin/env bash
# Build the cloud decoder image (deploy/Dockerfile) with docker where an engine answers, else
# with podman. Extra arguments go to the build, e.g. --build-arg BASE_IMAGE=debian:bookworm-slim.
#
#   deploy/build-image.sh [build args...]
#   TANDEM_IMAGE=registry.example/tandem-cloud:0.1.0 deploy/build-image.sh
#   CONTAINER_ENGINE=podman deploy/build-image.sh      (choose the engine yourself)
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image=${TANDEM_IMAGE:-tandem-cloud:$version}
engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null 2>&1; then
    engine=podman
  else
    echo "build-image.sh: no docker engine and no podman; install one of them" >&2
    exit 1
  fi
fi
format=()
if [ "$engine" = podman ]; then
  format=(--format docker)  # the OCI format has no HEALTHCHECK; docker's keeps it
fi
echo "build-image.sh: building $image with $engine" >&2
exec "$engine" build "${format[@]}" -f deploy/Dockerfile -t "$image" "$@" .
