#!/usr/bin/env bash
# Makes PostgreSQL's server programs (initdb, pg_ctl, postgres) available for
# the search's many-machines test (tests/search/test_postgres.py), installing
# Debian's `postgresql` package with apt-get when they are missing. Idempotent:
# when they are present it installs nothing. Prints their directory on stdout.
# It starts no server; the test runs its own throwaway cluster (as the
# `postgres` user when run as root, since PostgreSQL refuses to run as root).
set -euo pipefail

find_bindir() {
  local initdb
  if initdb="$(command -v initdb)" && command -v pg_ctl >/dev/null; then
    dirname "$(readlink -f "$initdb")"
    return 0
  fi
  # Debian keeps the server programs off PATH, one directory per version.
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
    echo "$dir"
    return 0
  fi
  return 1
}

if find_bindir; then
  exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "postgres_setup.sh: initdb/pg_ctl are missing and installing the" \
    "postgresql package needs root (or password-less sudo)" >&2
  exit 1
fi

echo "postgres_setup.sh: installing Debian's postgresql package" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >&2
"${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql >&2

if ! find_bindir; then
  echo "postgres_setup.sh: postgresql is installed but initdb/pg_ctl" \
    "were not found on PATH or in /usr/lib/postgresql/*/bin" >&2
  exit 1
fi
