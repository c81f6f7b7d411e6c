#!/usr/bin/env bash
# Installs everything virtseed needs on a fresh Debian 12 machine (run as root).
# Idempotent: a second run checks each step and changes nothing.
#
#   scripts/setup.sh                  system packages, libvirtd, Salt 3007.17 venv
#   SALT_VERSIONS="3006.30 3007.17 3008.5" scripts/setup.sh
#   scripts/setup.sh --salt-only      only the Salt venvs
#
# Salt venvs go to ${VIRTSEED_CACHE:-~/.cache/virtseed}/salt-<version>.
set -euo pipefail

CACHE=${VIRTSEED_CACHE:-$HOME/.cache/virtseed}
SALT_VERSIONS=${SALT_VERSIONS:-3007.17}
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
ok() { printf '    %s\n' "$*"; }

salt_only=0
[ "${1:-}" = "--salt-only" ] && salt_only=1
functions_only=0
[ "${1:-}" = "--functions-only" ] && functions_only=1

install_debs() {
    # openssh-server: the tests' remote hypervisors (qemu+ssh:// to a private sshd on loopback).
    # dnsmasq-base: libvirt's networks' DHCP, and the DHCP server of the lab's plain bridge
    # (integration/harness/lab.rs). e2fsprogs: debugfs reads a clone's files from its disk.
    local want=(libvirt-daemon-system libvirt-dev pkg-config dosfstools mtools python3-venv
                debootstrap ovmf qemu-system-x86 qemu-utils qemu-block-extra openssh-server
                dnsmasq-base e2fsprogs iproute2 binutils
                systemd)  # systemd: only its systemd-analyze, to verify dist/systemd units
    local missing=()
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    # The machine ships qemu-utils from backports; qemu-system-x86 from bookworm needs the
    # bookworm qemu-utils beside it.
    local sysver utilsver
    sysver=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
    utilsver=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [ ${#missing[@]} -eq 0 ] && [ "$sysver" = "$utilsver" ]; then
        ok "Debian packages present"
        return
    fi
    step "apt-get install ${missing[*]:-qemu-utils (align with qemu-system-x86)}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # No package may start its service here (e.g. openssh-server's sshd on port 22): the
    # daemons virtseed needs are started below, by hand.
    local policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
    fi
    local qv
    qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    apt-get install -y -qq --allow-downgrades --no-install-recommends \
        -o Dpkg::Options::=--force-confold \
        libvirt-daemon-system libvirt-dev pkg-config dosfstools mtools python3-venv debootstrap ovmf systemd \
        openssh-server dnsmasq-base e2fsprogs iproute2 binutils "qemu-system-x86=$qv" "qemu-utils=$qv" "qemu-block-extra=$qv" >/dev/null
    [ -z "$policy" ] || rm -f "$policy"
    ok "installed (qemu $qv)"
}

start_libvirtd() {
    # Without udev, /dev/kvm stays root:root 0600. libvirt probes QEMU with KVM, then finds
    # /dev/kvm unusable by its qemu user, declares the capability cache stale and probes again
    # on every define (36 s each here). Give it the group and mode udev would.
    if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
        step "/dev/kvm: group kvm, mode 0660 (as udev would set it)"
        chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
    fi
    # No systemd here: start the daemons by hand when they are not running.
    if ! pgrep -x virtlogd >/dev/null; then
        step "starting virtlogd"
        virtlogd -d
    fi
    if ! pgrep -x libvirtd >/dev/null; then
        step "starting libvirtd"
        libvirtd -d
    fi
    for _ in $(seq 50); do
        virsh -c qemu:///system version >/dev/null 2>&1 && break
        sleep 0.2
    done
    virsh -c qemu:///system version >/dev/null 2>&1 || { echo "libvirtd did not answer" >&2; exit 1; }
    ok "libvirtd answers on qemu:///system"
}

# Salt's own runtime dependencies, listed explicitly: the newest salt pins a certifi the
# registry lacks, so salt itself is installed with --no-deps.
salt_deps() {
    local ver=$1 zmq="pyzmq<26"
    case $ver in 3008.*) zmq="pyzmq>=25.1.2 xxhash" ;; esac
    echo "$zmq" PyYAML msgpack Jinja2 MarkupSafe "tornado>=6.3" cryptography pycryptodomex \
        psutil distro looseversion packaging jmespath requests urllib3 certifi idna \
        charset-normalizer python-dateutil setproctitle jaraco.text jaraco.functools \
        jaraco.context more-itertools contextvars croniter aiohttp immutables \
        python-gnupg gitpython cffi pyopenssl "setuptools<81" wheel
}

install_salt() {
    local ver=$1 venv=$CACHE/salt-$1
    if [ -x "$venv/bin/salt-master" ] && "$venv/bin/python" -c "import salt.version,sys; sys.exit(salt.version.__version__ != '$ver')" 2>/dev/null; then
        # Added to the list later (3008's mmap_key key store imports xxhash).
        case $ver in 3008.*) "$venv/bin/python" -c "import xxhash" 2>/dev/null || "$venv/bin/pip" install -q xxhash ;; esac
        ok "salt $ver ready in $venv"
        return
    fi
    step "salt $ver into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    # The host sets PIP_FIND_LINKS and friends; keep them, they only add a local wheel dir.
    "$venv/bin/pip" install -q $(salt_deps "$ver")
    "$venv/bin/pip" install -q --no-deps --no-build-isolation "salt==$ver"
    "$venv/bin/python" -c "import salt.version; print('    salt', salt.version.__version__)"
}

# Sourced by other scripts for salt_deps and friends: define, do nothing.
if [ $functions_only -eq 1 ]; then return 0 2>/dev/null || exit 0; fi
mkdir -p "$CACHE"
if [ $salt_only -eq 0 ]; then
    install_debs
    start_libvirtd
fi
for v in $SALT_VERSIONS; do install_salt "$v"; done
step "setup done"
