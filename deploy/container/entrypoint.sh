#!/bin/sh
# Entrypoint of the VCC-PKI gateway image (deploy/container/Containerfile).
#
#   serve [ARGS]   the default: `vcc-pki init` first when the data directory is empty (a new
#                  volume; lost+found does not count), then `exec vcc-pki serve ARGS`, so the
#                  gateway is PID 1 and gets SIGTERM itself (graceful shutdown).
#   OTHER ARGS     `exec vcc-pki OTHER ARGS`: one-off commands in the same image
#                  (`ca list`, `backup --out /backup/x.tar`, `audit verify`).
#
# VCC_PKI_ENTRYPOINT_INIT: auto (the default: init on an empty data directory), always
# (init on every start: with PostgreSQL and an HSM the data directory holds only files init
# derives from the database; init is idempotent), never.
# VCC_PKI_BIN: the vcc-pki executable (default: vcc-pki on PATH).
# Refuses to run as root unless VCC_PKI_ALLOW_ROOT=1: the CA keys' files must not be root's.
set -eu

data_dir=${VCC_PKI_DATA_DIR:-/var/lib/vcc-pki}
export VCC_PKI_DATA_DIR="$data_dir"
vcc_pki=${VCC_PKI_BIN:-vcc-pki}
init_mode=${VCC_PKI_ENTRYPOINT_INIT:-auto}

say() { echo "vcc-pki-entrypoint: $*" >&2; }

if [ "$(id -u)" = 0 ] && [ "${VCC_PKI_ALLOW_ROOT:-0}" != 1 ]; then
  say "refusing to run as root (the image runs as vcc-pki, uid 10001; VCC_PKI_ALLOW_ROOT=1 overrides)"
  exit 64
fi

# True when the directory is missing or holds nothing but lost+found.
is_empty() {
  [ -d "$1" ] || return 0
  for entry in "$1"/* "$1"/.[!.]* "$1"/..?*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue  # an unmatched glob
    [ "${entry##*/}" = lost+found ] && continue
    return 1
  done
  return 0
}

if [ "$#" -eq 0 ]; then
  set -- serve
fi

if [ "$1" = serve ]; then
  case "$init_mode" in
    auto)
      if is_empty "$data_dir"; then
        say "$data_dir is empty: vcc-pki init"
        "$vcc_pki" init
      fi ;;
    always) "$vcc_pki" init ;;
    never) ;;
    *) say "VCC_PKI_ENTRYPOINT_INIT must be auto, always or never, not '$init_mode'"; exit 64 ;;
  esac
fi
exec "$vcc_pki" "$@"
