#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 with trust auth and a database `test`,
# installing and starting it when needed. Used by scripts/test.sh; safe to run repeatedly.
set -euo pipefail

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
psql_admin() { psql -h 127.0.0.1 -U postgres -d postgres -Atq "$@"; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! ready; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "ensure-postgres: installing PostgreSQL"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "ensure-postgres: PostgreSQL is not installed and apt-get is unavailable" >&2
    exit 1
  fi
fi

if ! ready; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  # Tests connect over TCP as `postgres` without a password (loopback only).
  if [ -f "$hba" ] && ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do ready && break; sleep 0.5; done
fi

if ! ready; then
  echo "ensure-postgres: PostgreSQL does not answer on 127.0.0.1:5432" >&2
  exit 1
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'test'")" != "1" ]; then
  psql_admin -c "CREATE DATABASE test"
fi
