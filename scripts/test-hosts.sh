#!/usr/bin/env bash
# Second (and third...) Docker hosts on this machine, for the multi-host tests and bench:
# each is a network namespace `ru-hostN` with its own address on a veth pair
# (10.231.N.2, this side 10.231.N.1), its own dockerd (own sockets, data root, exec root,
# so 5221/5222 are free there), an sshd (the ssh:// transport) and a TLS endpoint
# (tcp://10.231.N.2:2376, client certificates generated here, DOCKER_CERT_PATH-style).
# Each data root is on a 4 GB ext4 filesystem of its own (a sparse file, loop-mounted), as
# the fault engine's is, which the second host's disk-full tests fill; a dockerd that ran
# on a plain data root is stopped and started on it (its images are loaded again).
# dockerd enters only the namespace's network (nsenter, not `ip netns exec`, which would
# mount a /sys without the cgroup hierarchy dockerd needs).
# The test base image is loaded into each engine once.
#
#   bash scripts/test-hosts.sh [COUNT]      # hosts 2..COUNT+1, default 1 (ru-host2 only)
#
# Also a registry (Debian's docker-registry) with TLS at 10.231.2.1:5000, which every
# engine here trusts through /etc/docker/certs.d (for rollout.distribute = "registry").
#
# Idempotent; needs root. Everything lives under /var/lib/rolling-update-hosts.
set -euo pipefail

DOCKER=/usr/bin/docker
BASE_IMAGE=${RU_TEST_BASE:-rolling-update-test-base:bookworm-tini}
COUNT=${1:-1}
ROOT=/var/lib/rolling-update-hosts

if [ ! -x /usr/sbin/sshd ] || [ ! -x /usr/bin/docker-registry ] || ! command -v curl >/dev/null; then
  echo "test-hosts: installing openssh-server and docker-registry"
  apt-get update -qq
  # The packages' own services are not wanted: ours run on the test addresses.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client curl \
    docker-registry >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

mkdir -p "$ROOT/ssh" "$ROOT/certs"
chmod 700 "$ROOT/ssh"

# One client key and one CA for all hosts.
[ -f "$ROOT/ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$ROOT/ssh/id_ed25519"
[ -f "$ROOT/ssh/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$ROOT/ssh/host_ed25519"
cp "$ROOT/ssh/id_ed25519.pub" "$ROOT/ssh/authorized_keys"
chmod 600 "$ROOT/ssh/authorized_keys"
certs=$ROOT/certs
if [ ! -f "$certs/ca.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=rolling-update test CA" \
    -keyout "$certs/ca-key.pem" -out "$certs/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=client" \
    -keyout "$certs/key.pem" -out "$certs/client.csr" 2>/dev/null
  printf 'extendedKeyUsage = clientAuth\n' >"$certs/client.ext"
  openssl x509 -req -in "$certs/client.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca-key.pem" \
    -CAcreateserial -days 3650 -extfile "$certs/client.ext" -out "$certs/cert.pem" 2>/dev/null
fi

for n in $(seq 2 $((COUNT + 1))); do
  ns=ru-host$n
  here=10.231.$n.1
  there=10.231.$n.2
  dir=$ROOT/$ns
  mkdir -p "$dir"
  if ! ip netns list | grep -qw "$ns"; then
    ip netns add "$ns"
    ip link add "ru-h${n}a" type veth peer name "ru-h${n}b"
    ip link set "ru-h${n}b" netns "$ns"
    ip addr add "$here/24" dev "ru-h${n}a"
    ip link set "ru-h${n}a" up
    ip netns exec "$ns" ip addr add "$there/24" dev "ru-h${n}b"
    ip netns exec "$ns" ip link set "ru-h${n}b" up
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip route add default via "$here"
  fi

  # The engine's server certificate names its address.
  if [ ! -f "$dir/server-cert.pem" ]; then
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$there" \
      -keyout "$dir/server-key.pem" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName = IP:%s\nextendedKeyUsage = serverAuth\n' "$there" >"$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca-key.pem" \
      -CAcreateserial -days 3650 -extfile "$dir/server.ext" -out "$dir/server-cert.pem" 2>/dev/null
  fi

  disk=$dir/disk
  if ! mountpoint -q "$disk"; then
    if [ ! -f "$dir/data-root.ext4" ]; then
      truncate -s 4G "$dir/data-root.ext4.tmp"
      # No blocks reserved for root: dockerd runs as root and must meet a full disk.
      mkfs.ext4 -q -F -m 0 "$dir/data-root.ext4.tmp"
      mv "$dir/data-root.ext4.tmp" "$dir/data-root.ext4"
    fi
    mkdir -p "$disk"
    mount -o loop "$dir/data-root.ext4" "$disk"
  fi
  sock=/run/$ns/docker.sock
  pid=$(cat "/run/$ns/docker.pid" 2>/dev/null || true)
  # A dockerd (not whatever took a stale pid file's number) on another data root.
  if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] \
    && tr '\0' '\n' <"/proc/$pid/cmdline" | sed -n 1p | grep 'dockerd$' >/dev/null \
    && ! tr '\0' '\n' <"/proc/$pid/cmdline" | grep -xF "$disk/docker" >/dev/null; then
    echo "test-hosts: moving $ns's dockerd onto its own filesystem"
    # Its containers first: with live-restore they would outlive it, unseen by the next.
    ids=$("$DOCKER" -H "unix://$sock" ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || "$DOCKER" -H "unix://$sock" rm -f $ids >/dev/null || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 600); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "test-hosts: $ns's dockerd ($pid) did not stop within 60 s" >&2
      exit 1
    fi
    # The plain data root it left: dockerd's own bind mount of it first, and not while
    # anything else is still mounted in it.
    ! mountpoint -q "$dir/docker" || umount "$dir/docker"
    grep -qF " $dir/docker/" /proc/mounts || rm -rf "$dir/docker"
  fi

  if ! "$DOCKER" -H "unix://$sock" info >/dev/null 2>&1; then
    if [ -f "/run/$ns/docker.pid" ] && ! kill -0 "$(cat "/run/$ns/docker.pid")" 2>/dev/null; then
      rm -f "/run/$ns/docker.pid"
    fi
    mkdir -p "/run/$ns"
    echo "test-hosts: starting dockerd in $ns (log: $dir/dockerd.log)"
    nohup nsenter --net="/run/netns/$ns" dockerd \
      --data-root "$disk/docker" --exec-root "/run/$ns/exec" --pidfile "/run/$ns/docker.pid" \
      -H "unix://$sock" -H "tcp://$there:2376" \
      --tlsverify --tlscacert "$certs/ca.pem" --tlscert "$dir/server-cert.pem" \
      --tlskey "$dir/server-key.pem" \
      --bip 172.31.$n.1/24 --cgroup-parent "$ns" \
      >"$dir/dockerd.log" 2>&1 &
    for _ in $(seq 1 120); do
      "$DOCKER" -H "unix://$sock" info >/dev/null 2>&1 && break
      sleep 0.5
    done
    "$DOCKER" -H "unix://$sock" info >/dev/null 2>&1 || { tail -20 "$dir/dockerd.log"; exit 1; }
  fi
  if ! "$DOCKER" -H "unix://$sock" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "test-hosts: loading $BASE_IMAGE into $ns"
    "$DOCKER" save "$BASE_IMAGE" | "$DOCKER" -H "unix://$sock" load >/dev/null
  fi

  cat >"$dir/sshd_config" <<EOF
ListenAddress $there
Port 22
HostKey $ROOT/ssh/host_ed25519
AuthorizedKeysFile $ROOT/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowStreamLocalForwarding yes
AllowTcpForwarding yes
StrictModes no
PidFile /run/$ns/sshd.pid
UsePAM no
EOF
  if ! { [ -f "/run/$ns/sshd.pid" ] && kill -0 "$(cat "/run/$ns/sshd.pid")" 2>/dev/null; }; then
    mkdir -p /run/sshd
    ip netns exec "$ns" /usr/sbin/sshd -f "$dir/sshd_config"
  fi
  echo "test-hosts: $ns ready (unix://$sock, tcp://$there:2376 TLS, ssh://root@$there)"
done

# The client's known_hosts and ssh_config name every host made so far (a later run with a
# smaller COUNT keeps the others usable).
: >"$ROOT/ssh/known_hosts"
: >"$ROOT/ssh/config"
for dir in "$ROOT"/ru-host*; do
  n=${dir##*ru-host}
  there=10.231.$n.2
  echo "$there $(cut -d' ' -f1,2 "$ROOT/ssh/host_ed25519.pub")" >>"$ROOT/ssh/known_hosts"
  cat >>"$ROOT/ssh/config" <<EOF
Host ru-host$n
  HostName $there
  User root
  IdentityFile $ROOT/ssh/id_ed25519
  UserKnownHostsFile $ROOT/ssh/known_hosts
Host $there
  User root
  IdentityFile $ROOT/ssh/id_ed25519
  UserKnownHostsFile $ROOT/ssh/known_hosts
EOF
done

# The registry: on this side of ru-host2's veth, so that both engines reach it by one name.
registry=10.231.2.1:5000
rdir=$ROOT/registry
mkdir -p "$rdir/data"
if [ ! -f "$rdir/cert.pem" ]; then
  openssl req -newkey rsa:2048 -nodes -subj "/CN=10.231.2.1" \
    -keyout "$rdir/key.pem" -out "$rdir/cert.csr" 2>/dev/null
  printf 'subjectAltName = IP:10.231.2.1\nextendedKeyUsage = serverAuth\n' >"$rdir/cert.ext"
  openssl x509 -req -in "$rdir/cert.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca-key.pem" \
    -CAcreateserial -days 3650 -extfile "$rdir/cert.ext" -out "$rdir/cert.pem" 2>/dev/null
fi
mkdir -p "/etc/docker/certs.d/$registry"
cp "$certs/ca.pem" "/etc/docker/certs.d/$registry/ca.crt"
cat >"$rdir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $rdir/data
  delete:
    enabled: true
http:
  addr: $registry
  tls:
    certificate: $rdir/cert.pem
    key: $rdir/key.pem
EOF
if ! curl -sf --cacert "$certs/ca.pem" "https://$registry/v2/" >/dev/null 2>&1; then
  echo "test-hosts: starting the registry at $registry (log: $rdir/registry.log)"
  nohup /usr/bin/docker-registry serve "$rdir/config.yml" >"$rdir/registry.log" 2>&1 &
  for _ in $(seq 1 60); do
    curl -sf --cacert "$certs/ca.pem" "https://$registry/v2/" >/dev/null 2>&1 && break
    sleep 0.25
  done
  curl -sf --cacert "$certs/ca.pem" "https://$registry/v2/" >/dev/null \
    || { tail -20 "$rdir/registry.log"; exit 1; }
fi
echo "test-hosts: registry https://$registry ready"
