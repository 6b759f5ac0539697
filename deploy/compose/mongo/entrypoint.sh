#!/usr/bin/env bash
# MongoDB 5 as a one-node replica set with authentication (seed §3.1: the
# catalog's engine; Debezium reads its change streams).  A replica set with
# authentication needs a key file for its members: made here on the first
# start, kept in the config volume, never committed.  Then the image's own
# entrypoint (which creates the root user and runs initdb/ on first start).
set -Eeuo pipefail
key=/data/configdb/keyfile
if [ ! -s "$key" ]; then
    head -c 756 /dev/urandom | base64 -w0 > "$key"
fi
chown mongodb:mongodb "$key"
chmod 400 "$key"
exec docker-entrypoint.sh "$@"
