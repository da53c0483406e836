#!/usr/bin/env bash
# Builds the CPU image, starts deploy/compose.yaml with two replicas behind nginx, and checks
# that greedy requests through the load balancer reach both replicas and get the same answer as
# a single container. Needs a Docker engine with BuildKit and docker compose (v2, or v1 with
# --compatibility); pulls rust:1.95-bookworm, debian:bookworm-slim and nginx:1.27-alpine.
#
#   tools/check_docker.sh            # ports 8080 and 18080 must be free
#   ECHOVLM_COMPOSE_OVERRIDE=FILE tools/check_docker.sh   # an extra compose file on top
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose --compatibility)
fi
project=echovlm-check
files=(-f deploy/compose.yaml)
if [[ -n "${ECHOVLM_COMPOSE_OVERRIDE:-}" ]]; then
    files+=(-f "$ECHOVLM_COMPOSE_OVERRIDE")
fi
cleanup() {
    "${compose[@]}" -p "$project" "${files[@]}" down >/dev/null 2>&1 || true
    docker rm -f "$project-single" >/dev/null 2>&1 || true
}
trap cleanup EXIT

DOCKER_BUILDKIT=1 docker build -q -t echovlm-server:latest . >/dev/null
echo "image: $(docker image inspect -f '{{.Size}}' echovlm-server:latest | awk '{printf "%.0f MB", $1/1e6}')"

# shellcheck source=tools/docker_common.sh
source tools/docker_common.sh

# one container: the reference answer
docker run -d --name "$project-single" -p 18080:8080 echovlm-server:latest >/dev/null
wait_ready 18080
expected=$(ask 18080 | field "d['choices'][0]['message']['content']")
docker rm -f "$project-single" >/dev/null

# two replicas behind the load balancer
"${compose[@]}" -p "$project" "${files[@]}" up -d >/dev/null
wait_ready 8080
for i in $(seq 8); do
    content=$(ask 8080 | field "d['choices'][0]['message']['content']")
    [[ "$content" == "$expected" ]] || { echo "request $i: '$content' != '$expected'" >&2; exit 1; }
done
# every replica counts the completions it answered
counts=()
for c in $(docker ps --filter "name=${project}_echovlm" --filter "name=${project}-echovlm" -q); do
    n=$(docker exec "$c" curl -fsS http://127.0.0.1:8080/metrics |
        awk -F' ' '/^echovlm_http_requests_total\{route="\/v1\/chat\/completions",status="200"\}/ {print $2}')
    counts+=("${n:-0}")
done
(( ${#counts[@]} == 2 )) || { echo "${#counts[@]} replicas running" >&2; exit 1; }
for n in "${counts[@]}"; do
    (( n > 0 )) || { echo "a replica answered nothing: ${counts[*]}" >&2; exit 1; }
done
healthy=$(docker ps --filter "name=${project}" --filter health=healthy -q | wc -l)
(( healthy >= 2 )) || { echo "$healthy healthy replicas" >&2; exit 1; }
echo "ok: 8 requests through nginx answered by two replicas (${counts[*]}), $healthy healthy, each answer equal to one container's"
