#!/usr/bin/env bash
# One-shot (the connect-init service): register every Debezium connector in
# /connectors (one JSON config per file, the file name is the connector's)
# with PUT /connectors/NAME/config, which creates or updates it, so a second
# `docker compose up` is harmless; then wait until each runs its task.
# Passwords stay out of the files: they read ${env:VAR} through Kafka's
# EnvVarConfigProvider, from the connect container's environment.
set -Eeuo pipefail
api=${CONNECT_URL:-http://connect:8083}
for f in /connectors/*.json; do
    name=$(basename "$f" .json)
    echo "connect-init: registering $name"
    curl -fsS --retry 10 --retry-delay 3 --retry-all-errors -X PUT \
        -H 'Content-Type: application/json' --data @"$f" "$api/connectors/$name/config" >/dev/null
done
for f in /connectors/*.json; do
    name=$(basename "$f" .json)
    for i in $(seq 1 60); do
        body=$(curl -fsS "$api/connectors/$name/status" || true)
        if grep -q '"tasks":\[{"id":0,"state":"RUNNING"' <<<"$body"; then
            echo "connect-init: $name running"
            continue 2
        fi
        sleep 2
    done
    echo "connect-init: $name is not running: $body" >&2
    exit 1
done
