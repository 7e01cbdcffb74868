#!/usr/bin/env bash
# The tests talk to a real PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379). A machine of
# this kind runs both before the session starts; this starts whichever of the two is down (and
# installs redis-server when it is missing), so a stopped service is a setup step, not a red CI.
# A server someone pointed the tests elsewhere with (VCC_PKI_TEST_REDIS_URL) is left alone.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # port, name
  for _ in $(seq 1 100); do
    listening "$1" && return 0
    sleep 0.1
  done
  echo "test-services: $2 did not come up on 127.0.0.1:$1" >&2
  return 1
}

if [ -z "${VCC_PKI_TEST_REDIS_URL:-}" ] && ! listening 6379; then
  if ! command -v redis-server >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server
  fi
  echo "test-services: starting redis-server on 127.0.0.1:6379" >&2
  $SUDO mkdir -p /var/log/redis /var/lib/redis
  # Nothing on disk: the tests flush what they write, and a failed snapshot (MISCONF) would
  # refuse writes.
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/vcc-pki-tests.log
  wait_for 6379 Redis
fi

if ! listening 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "test-services: starting PostgreSQL" >&2
    for version in $(ls /etc/postgresql); do
      $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    wait_for 5432 PostgreSQL
  else
    echo "test-services: no PostgreSQL on 127.0.0.1:5432 and none installed to start" >&2
    exit 1
  fi
fi
