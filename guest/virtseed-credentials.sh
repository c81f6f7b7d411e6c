#!/bin/sh
# Installs the minion identity virtseed gave this clone into /etc/salt, early in boot and
# before salt-minion starts. The same files come by either seed channel:
#  - seed: smbios      systemd credentials from SMBIOS type 11 ($CREDENTIALS_DIRECTORY);
#  - seed: cloud-init  files beside user-data on the NoCloud volume (the virtio disk with
#                      serial `virtseed-seed`, or any volume labelled cidata). Read here at
#                      once, rather than ~20 s later by cloud-init's salt_minion module. The
#                      volume's meta-data and user-data are copied to cloud-init's seed
#                      directory, so cloud-init, which runs later, no longer needs the volume
#                      (virtseed detaches it after the first ping).
# The private key lands 0400. When virtseed sent no key (the operator chose
# `accept: on_first_auth`), the minion makes its own and virtseed accepts that first key.
# With the profile's `nameserver`, virtseed.resolv.conf becomes /etc/resolv.conf (a file in
# place of systemd-resolved's stub link: DHCP's servers are no longer used); with `swap`,
# virtseed.swap_mib is the size of /swapfile, made once, listed in /etc/fstab and turned on.
#
# VIRTSEED_ROOT installs into a scratch root; VIRTSEED_SEED names a directory to read instead
# of the NoCloud volume (both for tests).
set -eu
root=${VIRTSEED_ROOT:-}
umask 077
src=
channel=
mnt=
cleanup() { if [ -n "$mnt" ]; then umount "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true; fi; }
trap cleanup EXIT

c=${CREDENTIALS_DIRECTORY:-}
if [ -n "$c" ] && [ -s "$c/virtseed.minion_id" ]; then
    src=$c; channel=smbios
elif [ -n "${VIRTSEED_SEED:-}" ]; then
    src=$VIRTSEED_SEED; channel=cloud-init
else
    dev=
    for s in /sys/block/vd*/serial; do
        [ -r "$s" ] && [ "$(cat "$s")" = virtseed-seed ] && dev=/dev/${s#/sys/block/} && dev=${dev%/serial}
    done
    [ -n "$dev" ] || dev=$(blkid -t LABEL=cidata -o device 2>/dev/null | head -n1) || true
    if [ -n "$dev" ]; then
        mnt=$(mktemp -d /run/virtseed-seed.XXXXXX)
        if mount -t vfat -o ro,nosuid,nodev,noexec "$dev" "$mnt"; then
            src=$mnt; channel=cloud-init
        else
            rmdir "$mnt"; mnt=
            echo "virtseed: cannot mount the seed volume $dev; leaving the identity to cloud-init"
        fi
    fi
fi
[ -n "$src" ] && [ ! -s "$src/virtseed.minion_id" ] && src=
warm_port=${VIRTSEED_WARM_PORT:-/dev/virtio-ports/org.virtseed.warm.0}
[ -e "$warm_port" ] || warm_port=
if [ -z "$src" ] && [ -z "$warm_port" ]; then
    echo "virtseed: no identity from virtseed on this boot: nothing to do"
    exit 0
fi

# Which machine this is: the domain's UUID. The identity is installed once per machine: the
# UUID it was installed for is kept in $stamp (virtseed-warm writes it too), and a reboot of
# the same clone changes nothing. Any other UUID is a new clone, of a template that may have
# been booted before (its own machine-id, SSH host keys, minion id and key, caches, leases):
# all of that goes first, as virt-sysprep would, then the clone's own identity comes in.
stamp=$root/var/lib/virtseed/instance
uuid=${VIRTSEED_UUID:-}
[ -n "$uuid" ] || { IFS= read -r uuid < /sys/class/dmi/id/product_uuid; } 2>/dev/null || true
# Without its dashes (the kernel prints it in lower case), as a machine-id. Builtins only.
saved_ifs=$IFS; IFS=-; set -- $uuid; IFS=$saved_ifs; uuid=${1:-}${2:-}${3:-}${4:-}${5:-}
old=
[ -s "$stamp" ] && IFS= read -r old < "$stamp"
if [ -n "$uuid" ] && [ "$old" = "$uuid" ]; then
    echo "virtseed: this machine's identity is installed already: nothing to do"
    exit 0
fi
clean_template_state() {
    cleaned=
    for f in "$root"/etc/salt/pki/minion/* "$root/etc/salt/minion_id" "$root/var/cache/salt/minion"; do
        [ -e "$f" ] || [ -L "$f" ] || continue
        rm -rf "$f"; cleaned="$cleaned ${f#"$root"}"
    done
    # cloud-init's per-instance state; a NoCloud seed virtseed put there for the template.
    for f in instance instances data sem; do
        [ -e "$root/var/lib/cloud/$f" ] || [ -L "$root/var/lib/cloud/$f" ] || continue
        rm -rf "$root/var/lib/cloud/$f"; cleaned="$cleaned /var/lib/cloud/$f"
    done
    if grep -qs virtseed "$root/var/lib/cloud/seed/nocloud/user-data"; then
        rm -rf "$root/var/lib/cloud/seed/nocloud"; cleaned="$cleaned /var/lib/cloud/seed/nocloud"
    fi
    # DHCP clients' saved leases (dhclient, NetworkManager); networkd keeps none on disk.
    for f in "$root"/var/lib/dhcp/*.lease* "$root"/var/lib/dhclient/*.lease* "$root"/var/lib/NetworkManager/*.lease; do
        [ -e "$f" ] || continue
        rm -f "$f"; cleaned="$cleaned ${f#"$root"}"
    done
    # SSH host keys: each type the template had, made again (before sshd starts).
    for f in "$root"/etc/ssh/ssh_host_*_key; do
        [ -e "$f" ] || continue
        t=${f##*/ssh_host_}; t=${t%_key}
        rm -f "$f" "$f.pub"
        if ssh-keygen -q -t "$t" -N "" -C "root@${id:-virtseed}" -f "$f" >/dev/null 2>&1; then
            cleaned="$cleaned ssh_host_${t}_key (new)"
        else
            cleaned="$cleaned ssh_host_${t}_key (removed; could not make a new one)"
        fi
    done
    # machine-id: PID 1 took it before any unit ran. On a kernel command line virtseed wrote
    # (systemd.machine_id=) it is the UUID already; from a bootloader, a booted template's id
    # is still there: networkd, D-Bus, sshd and the minion, which start after this, get the
    # clone's; journald keeps the old one until the next boot, so the new id's journal
    # directory points at the old one (journalctl reads the directory of /etc/machine-id).
    mid=
    [ -s "$root/etc/machine-id" ] && IFS= read -r mid < "$root/etc/machine-id"
    if [ -n "$uuid" ] && [ "$mid" != "$uuid" ]; then
        echo "$uuid" > "$root/etc/machine-id.tmp" && chmod 0444 "$root/etc/machine-id.tmp" \
            && cat "$root/etc/machine-id.tmp" > "$root/etc/machine-id" && rm -f "$root/etc/machine-id.tmp"
        for d in "$root/run/log/journal" "$root/var/log/journal"; do
            if [ -n "$mid" ] && [ -d "$d/$mid" ] && [ ! -e "$d/$uuid" ]; then ln -s "$mid" "$d/$uuid"; fi
        done
        cleaned="$cleaned machine-id (${mid:-empty} -> $uuid)"
    fi
    if [ -n "$cleaned" ]; then
        echo "virtseed: a new clone: removed the template's$cleaned"
    fi
}
if [ -n "$src" ]; then IFS= read -r id < "$src/virtseed.minion_id" || true; fi
clean_template_state
if [ -z "$src" ]; then
    # The domain virtseed boots to save a warm state: virtseed-warm installs the identity.
    echo "virtseed: warm-state boot: the template's state is gone, virtseed-warm waits for an identity"
    exit 0
fi

mkdir -p "$root/etc/salt/pki/minion" "$root/etc/salt/minion.d"
install -m 0644 "$src/virtseed.minion.conf" "$root/etc/salt/minion.d/virtseed.conf"
install -m 0644 "$src/virtseed.minion_master.pub" "$root/etc/salt/pki/minion/minion_master.pub"
if [ -s "$src/virtseed.master_sign.pub" ]; then
    # The masters sign their keys (master_sign_pubkey): the minion verifies them by this one.
    install -m 0644 "$src/virtseed.master_sign.pub" "$root/etc/salt/pki/minion/master_sign.pub"
fi
if [ -s "$src/virtseed.minion.pem" ]; then
    install -m 0644 "$src/virtseed.minion.pub" "$root/etc/salt/pki/minion/minion.pub"
    install -m 0400 "$src/virtseed.minion.pem" "$root/etc/salt/pki/minion/minion.pem.tmp"
    mv "$root/etc/salt/pki/minion/minion.pem.tmp" "$root/etc/salt/pki/minion/minion.pem"
    keys="its key"
else
    keys="no key (the minion makes its own)"
fi
if [ -s "$src/virtseed.resolv.conf" ]; then
    rm -f "$root/etc/resolv.conf"
    install -m 0644 "$src/virtseed.resolv.conf" "$root/etc/resolv.conf"
fi
if [ -s "$src/virtseed.swap_mib" ] && [ ! -e "$root/swapfile" ]; then
    IFS= read -r mib < "$src/virtseed.swap_mib" || true
    case $mib in ''|*[!0-9]*) echo "virtseed: bad swap size ${mib:-(empty)}: no swap file"; mib= ;; esac
    if [ -n "$mib" ]; then
        # fallocate is instant (this runs before salt-minion); dd where it is not supported.
        if { fallocate -l "${mib}M" "$root/swapfile.tmp" 2>/dev/null \
                || dd if=/dev/zero of="$root/swapfile.tmp" bs=1M count="$mib" status=none; } \
            && chmod 0600 "$root/swapfile.tmp" && mkswap "$root/swapfile.tmp" >/dev/null \
            && mv "$root/swapfile.tmp" "$root/swapfile"; then
            grep -qs '^/swapfile ' "$root/etc/fstab" || echo '/swapfile none swap sw 0 0' >> "$root/etc/fstab"
            if [ -z "$root" ]; then swapon /swapfile || echo "virtseed: swapon /swapfile failed"; fi
        else
            rm -f "$root/swapfile.tmp"
            echo "virtseed: could not make a ${mib} MiB /swapfile"
        fi
    fi
fi
if [ "$channel" = cloud-init ]; then
    seed=$root/var/lib/cloud/seed/nocloud
    mkdir -p "$seed"
    for f in meta-data user-data vendor-data network-config; do
        if [ -f "$src/$f" ]; then install -m 0600 "$src/$f" "$seed/$f"; fi
    done
fi
# Last: salt-minion.service starts only once minion_id exists.
install -m 0644 "$src/virtseed.minion_id" "$root/etc/salt/minion_id.tmp"
mv "$root/etc/salt/minion_id.tmp" "$root/etc/salt/minion_id"
if [ -n "$uuid" ]; then
    mkdir -p "${stamp%/*}"
    echo "$uuid" > "$stamp"
fi
if [ -z "$root" ]; then
    # Not hostnamectl: this runs before D-Bus, and hostnamectl would wait for it (~5 s here).
    echo "$id" > /etc/hostname
    echo "$id" > /proc/sys/kernel/hostname
fi
echo "virtseed: installed the identity of $id ($channel, $keys)"
# The minion computes its grains (ipv4, ...) once, as it starts. The initramfs leases eth0
# within a few seconds on any DHCP network it reaches; when it did not (a busy host, a slow
# server), wait here for networkd's lease (a default route), up to LEASE_WAIT s (90: ten
# clones booting at once on two TCG cores took over 20 s to lease on a bridge): a minion
# started without an address would tell the master only 127.0.0.1 in its grains, and could
# not reach it before the lease anyway. Shell builtins but sleep: every exec costs under TCG.
has_default_route() {
    while read -r _ifc dst _rest; do
        [ "$dst" = 00000000 ] && return 0
    done < /proc/net/route
    return 1
}
if [ -z "$root" ] && [ -e /sys/class/net/eth0 ] && ! has_default_route; then
    n=0; max=$(( ${LEASE_WAIT:-90} * 5 ))
    while [ $n -lt $max ] && ! has_default_route; do sleep 0.2; n=$((n + 1)); done
    if has_default_route; then
        echo "virtseed: waited $((n / 5)).$((n % 5 * 2)) s for a DHCP lease (none from the initramfs)"
    else
        echo "virtseed: no DHCP lease after ${LEASE_WAIT:-90} s: starting the minion without an address"
    fi
fi
