#!/usr/bin/env bash
# Entrypoint of every PostgreSQL container of docker-compose.yml (postgres:14),
# run as root before the image's own docker-entrypoint.sh:
#
#  - the WAL archive volume belongs to postgres (archive_command copies into it);
#  - the replica (MSDB_ROLE=replica), on its first start only: a base backup of
#    its primary with `pg_basebackup -R` and a physical slot, then streaming
#    through the Toxiproxy link `orders-replication` as the embedded stack does.
#
# A primary's databases, roles, TLS certificate and pg_hba.conf are made by
# initdb/10-msdb.sh, which the image runs on the first start of an empty volume.
set -Eeuo pipefail

archive=/var/lib/postgresql/wal-archive
mkdir -p "$archive"
chown postgres:postgres "$archive"
chmod 700 "$archive"

if [ "${MSDB_ROLE:-primary}" = replica ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    primary="${MSDB_PRIMARY_HOST:?MSDB_PRIMARY_HOST names the primary}"
    slot=pg_replica_slot
    echo "msdb: waiting for $primary to accept connections"
    for _ in $(seq 1 180); do
        pg_isready -h "$primary" -p 5432 -q && break
        sleep 1
    done
    pg_isready -h "$primary" -p 5432 -q || { echo "msdb: $primary never answered" >&2; exit 1; }

    # A replica rebuilt from scratch (its volume removed) makes its slot again.
    PGPASSWORD="$POSTGRES_PASSWORD" psql -v ON_ERROR_STOP=1 -qAt \
        "host=$primary port=5432 user=postgres dbname=postgres sslmode=require" \
        -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
            WHERE slot_name = '$slot' AND NOT active" >/dev/null

    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    echo "msdb: pg_basebackup of $primary"
    PGPASSWORD="${MSDB_PG_REPLICATOR_PASSWORD:?}" PGSSLMODE=require \
        gosu postgres pg_basebackup -h "$primary" -p 5432 -U replicator -D "$PGDATA" \
            -R -X stream -c fast -C -S "$slot" --no-password

    # Stream through the fault proxy (the later line wins over the one -R wrote).
    # Passwords are letters, digits, - and _ (docs/compose.md): no quoting needed.
    cat >> "$PGDATA/postgresql.auto.conf" <<CONF
primary_conninfo = 'host=${MSDB_REPLICATION_HOST:-toxiproxy} port=${MSDB_REPLICATION_PORT:?} user=replicator password=$MSDB_PG_REPLICATOR_PASSWORD sslmode=require application_name=pg-replica'
primary_slot_name = '$slot'
CONF
    chown postgres:postgres "$PGDATA/postgresql.auto.conf"
fi

exec docker-entrypoint.sh "$@"
