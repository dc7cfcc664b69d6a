#!/usr/bin/env bash
# Install the real vhost-user peers the tests and benchmarks drive (QEMU 7.2, DPDK 22.11
# testpmd, a Debian kernel + busybox for tiny guests, ethtool and iperf3 copied into them; python3 for the
# independent frontend, setpriv for frontends run as another user; OVS-DPDK 3.1, the bench's
# third backend) and set up hugepages for DPDK.
# Idempotent and fast when everything is present. Root (apt) needed only to install.
set -euo pipefail
[ "${VHOSTFWD_NO_PEERS:-0}" = "1" ] && exit 0

have_all() {
  command -v qemu-system-x86_64 >/dev/null && command -v dpdk-testpmd >/dev/null &&
    command -v busybox >/dev/null && command -v cpio >/dev/null && command -v socat >/dev/null &&
    command -v ethtool >/dev/null && command -v iperf3 >/dev/null && [ -x /usr/bin/python3 ] && command -v setpriv >/dev/null &&
    ls /boot/vmlinuz-* >/dev/null 2>&1 &&
    ls /usr/lib/x86_64-linux-gnu/dpdk/pmds-*/librte_net_vhost.so* >/dev/null 2>&1 &&
    ls /usr/lib/x86_64-linux-gnu/dpdk/pmds-*/librte_net_virtio.so* >/dev/null 2>&1 &&
    [ -x /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk ] && command -v ovsdb-server >/dev/null &&
    command -v ovs-vsctl >/dev/null && command -v unshare >/dev/null
}

# The bench runs OVS-DPDK's daemons itself, privately (bench/ovs.ts); the package's own service
# must not start: a system ovs-vswitchd would hold the machine's OVS paths, and the bench waits
# for any ovs-vswitchd to finish before it measures. Where no policy-rc.d exists, one that
# refuses every start stands in during the install (invoke-rc.d and deb-systemd-invoke obey it).
no_service_starts() {
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
}

if ! have_all; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-peers: QEMU/DPDK/kernel missing and not root: install them as root (see shared PEERS notes)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  no_service_starts
  apt-get update -q
  apt-get install -y -q --no-install-recommends qemu-system-x86 dpdk dpdk-dev librte-net-vhost23 \
    librte-net-virtio23 librte-mempool-ring23 linux-image-amd64 busybox-static cpio socat ethtool iperf3 \
    python3 util-linux openvswitch-switch-dpdk
  have_all || { echo "install-peers: packages installed but a tool is still missing" >&2; exit 1; }
fi

# Hugepages for DPDK: 1024 x 2 MiB unless more are configured already.
if [ "$(id -u)" = 0 ]; then
  cur=$(cat /proc/sys/vm/nr_hugepages)
  if [ "$cur" -lt 1024 ]; then echo 1024 > /proc/sys/vm/nr_hugepages || true; fi
  mkdir -p /dev/hugepages
  mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages
  # stale files of killed testpmd runs hold pages
  find /dev/hugepages -maxdepth 1 -name 'vhostfwd-*' -mmin +10 -delete 2>/dev/null || true
fi
free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
if [ "${free:-0}" -lt 512 ]; then
  echo "install-peers: only ${free:-0} free hugepages (need 512 for two testpmd processes)" >&2
  exit 1
fi
echo "install-peers: qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), dpdk-testpmd and OVS-DPDK present, kernel $(ls /boot/vmlinuz-* | head -1), ${free} free hugepages"
