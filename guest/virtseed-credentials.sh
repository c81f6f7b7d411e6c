#!/bin/sh
# Copies virtseed's credentials ($CREDENTIALS_DIRECTORY, from SMBIOS) into /etc/salt.
# The private key lands 0400 and is the minion's own from its first start: the minion never
# makes a key of its own, and the master already accepted this one.
set -eu
c=${CREDENTIALS_DIRECTORY:-}
if [ -z "$c" ] || [ ! -s "$c/virtseed.minion_id" ]; then
    echo "no virtseed credentials (not seed: smbios): nothing to do"
    exit 0
fi
root=${VIRTSEED_ROOT:-}   # tests install into a scratch root
umask 077
mkdir -p "$root/etc/salt/pki/minion" "$root/etc/salt/minion.d"
install -m 0644 "$c/virtseed.minion.conf" "$root/etc/salt/minion.d/virtseed.conf"
install -m 0644 "$c/virtseed.minion_id" "$root/etc/salt/minion_id"
install -m 0644 "$c/virtseed.minion.pub" "$root/etc/salt/pki/minion/minion.pub"
install -m 0644 "$c/virtseed.minion_master.pub" "$root/etc/salt/pki/minion/minion_master.pub"
install -m 0400 "$c/virtseed.minion.pem" "$root/etc/salt/pki/minion/minion.pem.tmp"
mv "$root/etc/salt/pki/minion/minion.pem.tmp" "$root/etc/salt/pki/minion/minion.pem"
if [ -z "$root" ]; then
    # Not hostnamectl: this runs before D-Bus, and hostnamectl would wait for it (~5 s here).
    cat "$c/virtseed.minion_id" > /etc/hostname
    cat "$c/virtseed.minion_id" > /proc/sys/kernel/hostname
fi
