#!/usr/bin/env bash
# First start of a PostgreSQL primary (the image runs /docker-entrypoint-initdb.d/*
# once, on an empty data volume, as user postgres, against a server that listens
# on its Unix socket only).  The seed's security design (§2.1, §8, 接続設定と権限管理):
#
#  - TLS: a self-signed certificate made here (none is committed, none is shared
#    between volumes), TLS 1.3 at least;
#  - pg_hba.conf: TCP only over TLS (hostssl), SCRAM passwords only;
#  - one database and one login role per service (MSDB_DATABASES), CONNECT
#    revoked from PUBLIC;
#  - the CDC role (cdc_relay, REPLICATION) with one pgoutput slot per CDC source
#    database, made before any data exists so that every change is decoded, and
#    SELECT on the tables its owner makes later (Debezium's initial snapshot);
#  - `replicator` (REPLICATION) where the orders database lives: the replica's.
#
# Sourced by docker-entrypoint.sh (the file is not executable): no `exit`, no `set -u`.

msdb_psql() { psql -v ON_ERROR_STOP=1 --no-psqlrc -q --username "${POSTGRES_USER:-postgres}" "$@"; }

# -- TLS --------------------------------------------------------------------------------
openssl req -new -x509 -days 825 -nodes -newkey rsa:2048 \
    -subj "/CN=${MSDB_INSTANCE:-postgres}" \
    -keyout "$PGDATA/server.key" -out "$PGDATA/server.crt" 2>/dev/null
chmod 600 "$PGDATA/server.key"
cat >> "$PGDATA/postgresql.conf" <<'CONF'

# msdb (deploy/compose/postgres/initdb/10-msdb.sh): seed §8, TLS 1.3 in transit
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.3'
CONF

cat > "$PGDATA/pg_hba.conf" <<'HBA'
# Written by msdb (deploy/compose/postgres/initdb/10-msdb.sh).  Over TCP, TLS and a
# SCRAM password always; which database a role may open is decided by CONNECT
# privileges (REVOKE ... FROM PUBLIC).  Logical decoding (the CDC role) matches
# the `all` database line; `replication` is physical streaming only.
# TYPE   DATABASE     USER        ADDRESS    METHOD
local    all          postgres               peer
hostssl  all          all         all        scram-sha-256
hostssl  replication  replicator  all        scram-sha-256
host     all          all         all        reject
host     replication  all         all        reject
HBA

# -- roles and databases ---------------------------------------------------------------
declare -A DB=([users]=user_service_db [catalog]=product_service_db [orders]=order_service_db
               [payments]=payment_service_db [search]=search_service_db)
declare -A ROLE=([users]=user_service [catalog]=product_service [orders]=order_service
                 [payments]=payment_service [search]=search_service)
CDC_SOURCES=" users catalog orders "

for svc in ${MSDB_DATABASES:?MSDB_DATABASES lists the services whose databases this instance holds}; do
    db=${DB[$svc]:?unknown service $svc}
    role=${ROLE[$svc]}
    pwvar="MSDB_PG_${role^^}_PASSWORD"
    msdb_psql --dbname postgres -v role="$role" -v db="$db" -v pw="${!pwvar:?$pwvar is not set}" <<'SQL'
CREATE ROLE :"role" WITH LOGIN NOREPLICATION PASSWORD :'pw';
CREATE DATABASE :"db" OWNER :"role";
REVOKE CONNECT, TEMPORARY ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"role";
SQL
    msdb_psql --dbname "$db" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"

    if [[ "$CDC_SOURCES" == *" $svc "* ]]; then
        msdb_psql --dbname postgres -v pw="${MSDB_PG_CDC_RELAY_PASSWORD:?}" <<'SQL'
SELECT 'CREATE ROLE cdc_relay WITH LOGIN REPLICATION PASSWORD ' || quote_literal(:'pw')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cdc_relay')
\gexec
SQL
        msdb_psql --dbname "$db" -v role="$role" -v db="$db" -v slot="cdc_$svc" <<'SQL'
GRANT CONNECT ON DATABASE :"db" TO cdc_relay;
ALTER DEFAULT PRIVILEGES FOR ROLE :"role" IN SCHEMA public GRANT SELECT ON TABLES TO cdc_relay;
SELECT pg_create_logical_replication_slot(:'slot', 'pgoutput');
SQL
    fi
done

if [[ " $MSDB_DATABASES " == *" orders "* ]]; then
    msdb_psql --dbname postgres -v pw="${MSDB_PG_REPLICATOR_PASSWORD:?}" <<'SQL'
CREATE ROLE replicator WITH LOGIN REPLICATION PASSWORD :'pw';
SQL
fi
unset -f msdb_psql
