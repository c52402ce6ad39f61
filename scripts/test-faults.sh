#!/usr/bin/env bash
# The fault engine (tests marked `faults`): a second dockerd that the fault tests stop,
# restart (with and without live-restore) and "reboot", so that the main engine, which
# every other test uses, never restarts. It runs in this machine's network namespace
# (host-network containers listen on this loopback; the tool's nftables handoff and its
# connection count work as on the main engine), with its own socket (/run/ru-fault/docker.sock),
# data root, exec root, pid file and cgroup parent, and no bridge or iptables rules of its
# own. Its command line is in tests/faults.py, which the tests use to restart it.
# Its data root is on a 4 GB ext4 filesystem of its own (a sparse file, loop-mounted), which
# the disk-full tests fill; a fault engine that ran on a plain data root is stopped and
# started on it. The test base image is loaded into it once.
#
# Idempotent; needs root. Its data lives under /var/lib/rolling-update-faults.
set -euo pipefail

DOCKER=/usr/bin/docker
BASE_IMAGE=${RU_TEST_BASE:-rolling-update-test-base:bookworm-tini}
REPO=$(cd "$(dirname "$0")/.." && pwd)
SOCK=/run/ru-fault/docker.sock

python3 "$REPO/tests/faults.py" start
if ! "$DOCKER" -H "unix://$SOCK" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "test-faults: loading $BASE_IMAGE into the fault engine"
  "$DOCKER" save "$BASE_IMAGE" | "$DOCKER" -H "unix://$SOCK" load >/dev/null
fi
echo "test-faults: fault engine ready (unix://$SOCK)"
