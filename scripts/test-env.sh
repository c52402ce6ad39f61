#!/usr/bin/env bash
# Makes this machine ready for the test suite, idempotently:
#   a running Docker engine (installed from Debian's packages if missing), nftables
#   (for the kernel handoff) and the offline test base image (a debootstrapped Debian
#   with python3 and tini, built once), and a second Docker host in a network namespace
#   (scripts/test-hosts.sh: its own dockerd, sshd and TLS endpoint), and the fault engine
#   (scripts/test-faults.sh: a second dockerd the fault tests restart).
# Needs root, as on the project's machines. Real users keep BASE in their registry.
set -euo pipefail

DOCKER=/usr/bin/docker   # /usr/local/bin/docker is a newer client than the engine
BASE_IMAGE=${RU_TEST_BASE:-rolling-update-test-base:bookworm-tini}

if [ ! -x "$DOCKER" ] || ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null \
  || ! command -v nft >/dev/null; then
  echo "test-env: installing docker.io, debootstrap and nftables"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap nftables >/dev/null
fi

if ! "$DOCKER" info >/dev/null 2>&1; then
  # A killed dockerd leaves its pid file behind and the next start refuses.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  echo "test-env: starting dockerd (log: /var/log/rolling-update-dockerd.log)"
  nohup dockerd >/var/log/rolling-update-dockerd.log 2>&1 &
  for _ in $(seq 1 120); do
    "$DOCKER" info >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$DOCKER" info >/dev/null 2>&1 || { tail -20 /var/log/rolling-update-dockerd.log; exit 1; }
fi
echo "test-env: engine $("$DOCKER" version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "test-env: building $BASE_IMAGE with debootstrap (about 80 s, once per machine)"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=python3-minimal,libpython3.11-stdlib,tini \
    bookworm "$root" >/tmp/rolling-update-debootstrap.log 2>&1 \
    || { tail -20 /tmp/rolling-update-debootstrap.log; exit 1; }
  tar -C "$root" -c . | "$DOCKER" import - "$BASE_IMAGE" >/dev/null
fi
echo "test-env: base image $BASE_IMAGE ready"

# Debian's docker-compose (1.29): the real-Brain tests make a compose blue with it.
if [ ! -x /usr/bin/docker-compose ]; then
  echo "test-env: installing docker-compose"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi

# The real Brain (tests marked realbrain), where the machine has it beside the checkout:
# images cecelia-brain-real:1.98.0/1.98.1, PostgreSQL on 5433, /tmp/realbrain (~15 s when done).
REPO=$(cd "$(dirname "$0")/.." && pwd)
REALBRAIN=${RU_REALBRAIN:-$REPO/../shared/realbrain}
if [ -d "$REALBRAIN" ]; then
  echo "test-env: setting up the real Brain ($REALBRAIN/setup.sh)"
  DOCKER="$DOCKER" bash "$REALBRAIN/setup.sh"
else
  echo "test-env: $REALBRAIN missing: the real-Brain tests will be deselected"
fi

bash "$(dirname "$0")/test-hosts.sh"
bash "$(dirname "$0")/test-faults.sh"
