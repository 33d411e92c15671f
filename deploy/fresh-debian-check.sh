#!/usr/bin/env bash
# A new user's first hour on a fresh Debian 12, reproduced: a minimal bookworm root with only
# `git make python3 python3-venv ca-certificates`, no service running, in its own network
# namespace (NAT to the package registries through slirp4netns; the host's loopback, and so
# its PostgreSQL and mosquitto, stay out of reach). In it, from a clean clone of HEAD:
#   make demo  ·  CI=true make test  ·  `lepton demo` from a non-editable install
# Needs root, debootstrap and slirp4netns (apt-get install debootstrap slirp4netns); about
# 30-40 minutes on 2 cores, most of it pip and the test suite.
#
#   sudo deploy/fresh-debian-check.sh [--keep] [--only demo|test|install]
set -euo pipefail

repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
keep=0 only=""
while [ $# -gt 0 ]; do
  case $1 in
    --keep) keep=1 ;;
    --only) only=$2; shift ;;
    *) echo "usage: $0 [--keep] [--only demo|test|install]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || { echo "run as root: debootstrap and chroot need it" >&2; exit 2; }
for tool in debootstrap slirp4netns nsenter unshare ip; do
  command -v $tool >/dev/null || { echo "missing $tool: apt-get install debootstrap slirp4netns iproute2" >&2; exit 2; }
done

work=$(mktemp -d /var/tmp/lepton-fresh.XXXXXX)
root=$work/root
mounts=()
ns_pid="" slirp_pid=""
cleanup() {
  [ -n "$slirp_pid" ] && kill "$slirp_pid" 2>/dev/null || true
  [ -n "$ns_pid" ] && kill "$ns_pid" 2>/dev/null || true
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  if [ "$keep" -eq 1 ]; then echo "kept $root"; else rm -rf --one-file-system "$work"; fi
}
trap cleanup EXIT

# The mirror this host's apt already uses (no host is named here).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
echo "== debootstrap bookworm into $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log"
# The host's apt sources replace debootstrap's one-line list (else apt warns of duplicates).
if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
  cp /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/"
  rm -f "$root/etc/apt/sources.list"
fi
[ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$root/etc/apt/"
# A chroot has no init: keep package scripts from starting services (as container images do),
# so PostgreSQL is not running, exactly as on a fresh box before anyone starts it.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
echo "nameserver 10.0.2.3" >"$root/etc/resolv.conf"  # slirp4netns's DNS

for m in proc sys dev dev/pts dev/shm; do
  mount --bind "/$m" "$root/$m"
  mounts+=("$root/$m")
done

# Its own network namespace, with NAT out and no way back to the host's loopback.
unshare --net --fork sleep infinity &
ns_pid=$!
sleep 0.5
slirp4netns --configure --mtu=65520 --disable-host-loopback "$ns_pid" tap0 >"$work/slirp.log" 2>&1 &
slirp_pid=$!
sleep 1
nsenter --net --target "$ns_pid" ip link set lo up

inside() {  # run a shell line in the fresh root, in its namespace, with a clean environment
  nsenter --net --target "$ns_pid" chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@" bash -c "$line"
}

line="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends git make python3 python3-venv ca-certificates >/dev/null"
echo "== apt-get install git make python3 python3-venv ca-certificates"
inside
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"  # as the host trusts
git clone -q --no-local "$repo" "$root/root/lepton-edge"
echo "== clone of $(git -C "$repo" rev-parse --short HEAD); python3 is $(chroot "$root" python3 --version)"

status=0
if [ -z "$only" ] || [ "$only" = demo ]; then
  echo "== make demo"
  line="cd /root/lepton-edge && make demo ARGS='--live off --summary-json /root/demo.json'"
  inside || status=1
fi
if [ -z "$only" ] || [ "$only" = test ]; then
  echo "== CI=true make test"
  line="cd /root/lepton-edge && make test"
  inside CI=true || status=1
fi
if [ -z "$only" ] || [ "$only" = install ]; then
  echo "== lepton demo from a non-editable install made with /usr/bin/python3"
  line="/usr/bin/python3 -m venv /root/plain && /root/plain/bin/pip -q install '/root/lepton-edge[demo]' \
    && cd / && /root/plain/bin/lepton demo --devices 2 --duration 15 --live off"
  inside || status=1
fi
[ "$status" -eq 0 ] && echo "== fresh Debian 12: all passed" || echo "== fresh Debian 12: FAILED"
exit "$status"
