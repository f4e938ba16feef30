#!/usr/bin/env bash
# Makes sure a PostgreSQL server for the test suite answers on 127.0.0.1:5432 and prints the URL
# the tests should use (export it as TRAVELMAP_TEST_POSTGRES). Installs PostgreSQL from the
# distribution's packages when it is missing and this runs as root on Debian or Ubuntu; starts
# the cluster when it is down. Where the server asks for passwords on 127.0.0.1 (the packaged
# default), a role `travelmap_test` that may create databases is made for the tests.
set -euo pipefail

trust_url="postgres://postgres@127.0.0.1:5432/postgres"
role_url="postgres://travelmap_test:travelmap_test@127.0.0.1:5432/postgres"

say() { echo "ensure-postgres: $*" >&2; }

if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "PostgreSQL is not installed; installing it from the distribution's packages"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    else
        say "PostgreSQL is not installed. Install it (Debian/Ubuntu: sudo apt-get install postgresql),"
        say "or point TRAVELMAP_TEST_POSTGRES at a server where databases may be created."
        exit 1
    fi
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    say "starting the PostgreSQL $version cluster"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2
    for _ in $(seq 1 60); do
        pg_isready -q -h 127.0.0.1 -p 5432 && break
        sleep 0.5
    done
    pg_isready -q -h 127.0.0.1 -p 5432 || { say "PostgreSQL did not come up"; exit 1; }
fi

if psql "$trust_url" -Atqc 'SELECT 1' >/dev/null 2>&1; then
    echo "$trust_url"
    exit 0
fi
if ! psql "$role_url" -Atqc 'SELECT 1' >/dev/null 2>&1; then
    say "creating the role travelmap_test (may create databases) for the tests"
    su postgres -c "psql -Atq" >&2 <<'SQL'
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'travelmap_test') THEN
        CREATE ROLE travelmap_test LOGIN CREATEDB PASSWORD 'travelmap_test';
    END IF;
END
$$;
SQL
fi
psql "$role_url" -Atqc 'SELECT 1' >/dev/null
echo "$role_url"
