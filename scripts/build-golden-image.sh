#!/usr/bin/env bash
# Builds a small Debian 12 guest for virtseed, offline from Debian's packages and PyPI, and
# defines it as the shut-off base domain `virtseed-golden` in the dir pool `virtseed-golden`:
#   debootstrap minbase + systemd + the cloud kernel with a busybox initramfs
#   (guest/initramfs-init), cloud-init limited to NoCloud, salt-minion from PyPI in /opt/salt
#   (same no-deps install as the master), started early in boot and only once virtseed gave
#   it an identity, the unit that installs that identity from SMBIOS credentials or the
#   NoCloud volume (guest/virtseed-credentials.*), the warm-state unit (guest/virtseed-warm*,
#   started only in a domain with the org.virtseed.warm.0 port), DHCP by systemd-networkd (QEMU user
#   networking: the master is 10.0.2.2). No loop mounts: mkfs.ext4 -d, then qcow2. Direct
#   kernel boot; TCG unless a probe boot shows KVM works.
# Cached by content hash under /var/lib/virtseed/golden (libvirt's QEMU user must read it):
# a second run takes seconds.
#
#   scripts/build-golden-image.sh          (SALT_VERSION=3007.17 by default)
#   scripts/build-golden-image.sh --plain  (base domain `virtseed-plain`)
#
# --plain: a TEST image of a template without a seed channel, as salt-cloud's libvirt guide
# assumes one (a plain VM with SSH): sshd (password login for root, whose password is
# `plain`), salt-minion in /opt/salt that starts only once it has a key, no cloud-init, no
# virtseed guest unit. Clones get their identity by SSH deploy (`seed: ssh`). Never use it
# beyond tests: everyone knows its root password.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
SALT_VERSION=${SALT_VERSION:-3007.17}
OUT=${VIRTSEED_GOLDEN_DIR:-/var/lib/virtseed/golden}
PLAIN=
[ "${1:-}" = --plain ] && PLAIN=1
# What differs: the base domain's name, the package that gives it a way in, its description.
if [ -n "$PLAIN" ]; then
    NAME=${VIRTSEED_GOLDEN_NAME:-virtseed-plain}; WAY_IN=openssh-server
    WHAT="plain test image: sshd, root password plain, no seed channel"
else
    NAME=${VIRTSEED_GOLDEN_NAME:-virtseed-golden}; WAY_IN=cloud-init; WHAT="cloud-init NoCloud"
fi
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

key=$( (cat "$0" "$root"/guest/*; echo "$SALT_VERSION${PLAIN:+-plain}") | sha256sum | cut -c1-12)
img=$OUT/$key
mkdir -p "$OUT"; chmod 755 "$(dirname "$OUT")" "$OUT"
# One build at a time (they share /opt/salt as a staging area, and the base's definition):
# a second run waits here, then finds the image cached.
exec 9>"$OUT/.build.lock"
flock 9

# KVM only when a probe boot proves it works. On some machines /dev/kvm exists but a Debian
# kernel hangs under it (nested PVM, see the guest notes). The probe boots the image's kernel
# under KVM for up to 15 s and waits for its first console line. The result is kept beside
# the image; VIRTSEED_ACCEL=kvm|qemu overrides it.
accel() {
    if [ -n "${VIRTSEED_ACCEL:-}" ]; then echo "$VIRTSEED_ACCEL"; return; fi
    if [ -f "$img/accel" ]; then cat "$img/accel"; return; fi
    local a=qemu log
    if [ -r /dev/kvm ]; then
        # No root: the kernel panics at once and QEMU exits (-no-reboot); a hang times out.
        log=$(mktemp)
        timeout 15 qemu-system-x86_64 -accel kvm -cpu qemu64 -m 256 -nodefaults -nographic \
            -no-reboot -serial stdio -kernel "$img/vmlinuz" \
            -append "console=ttyS0 panic=-1 root=/dev/null" >"$log" 2>&1 </dev/null || true
        grep -q "Linux version" "$log" && a=kvm
        rm -f "$log"
    fi
    echo "$a" > "$img/accel"
    echo "$a"
}

define_domain() {
    local type; type=$(accel)
    local tcg="<tcg><tb-cache unit='MiB'>128</tb-cache></tcg>"
    [ "$type" = kvm ] && tcg=""
    echo "accelerator: $type (probe boot under KVM $([ "$type" = kvm ] && echo worked || echo failed or was skipped))"
    if ! virsh -q -c qemu:///system pool-info "$NAME" >/dev/null 2>&1; then
        virsh -q -c qemu:///system pool-define-as "$NAME" dir --target "$img" >/dev/null
    fi
    if [ "$(virsh -q -c qemu:///system pool-dumpxml "$NAME" | sed -n 's:.*<path>\(.*\)</path>.*:\1:p' | head -1)" != "$img" ]; then
        virsh -q -c qemu:///system pool-destroy "$NAME" >/dev/null 2>&1 || true
        virsh -q -c qemu:///system pool-undefine "$NAME" >/dev/null
        virsh -q -c qemu:///system pool-define-as "$NAME" dir --target "$img" >/dev/null
    fi
    virsh -q -c qemu:///system pool-start "$NAME" >/dev/null 2>&1 || true
    virsh -q -c qemu:///system pool-refresh "$NAME" >/dev/null
    virsh -q -c qemu:///system destroy "$NAME" >/dev/null 2>&1 || true
    cat > "$img/domain.xml" <<XML
<domain type='$type'>
  <name>$NAME</name>
  <description>virtseed golden image $key (Debian 12, salt-minion $SALT_VERSION, $WHAT)</description>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$img/vmlinuz</kernel>
    <initrd>$img/initrd.img</initrd>
    <cmdline>root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 net.ifnames=0</cmdline>
  </os>
  <features><acpi/>$tcg</features>
  <cpu mode='custom'><model>qemu64</model></cpu>
  <clock offset='utc'/>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$img/disk.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><model type='virtio'/></interface>
    <serial type='pty'><log file='/var/log/libvirt/qemu/$NAME-console.log' append='off'/></serial>
    <console type='pty'/>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
XML
    # Already defined over this image: left as it is (its UUID too, which warm states and
    # running clones do not mind, but a redefinition would change).
    if virsh -q -c qemu:///system dumpxml --inactive "$NAME" 2>/dev/null | grep -q "<source file='$img/disk.qcow2'/>"; then
        echo "base domain $NAME (shut off) over $img/disk.qcow2"
        return
    fi
    # Redefine from scratch (a new build has a new disk and kernel).
    virsh -q -c qemu:///system undefine "$NAME" >/dev/null 2>&1 || true
    virsh -q -c qemu:///system define "$img/domain.xml" >/dev/null
    echo "base domain $NAME (shut off) over $img/disk.qcow2"
}

if [ -f "$img/disk.qcow2" ] && [ -f "$img/vmlinuz" ] && [ -f "$img/initrd.img" ]; then
    step "golden image $key is cached"
    define_domain
    exit 0
fi

work=$(mktemp -d /var/tmp/virtseed-golden.XXXXXX)
trap '[ -n "${VIRTSEED_KEEP_WORK:-}" ] || rm -rf "$work"' EXIT
rootfs=$work/root
t0=$(date +%s)

step "debootstrap bookworm (minbase)"
# The host's environment (pip settings and the like) must not leak into the chroot.
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 debootstrap --variant=minbase \
    --include=systemd-sysv,udev,dbus,init-system-helpers,netbase,iproute2,ca-certificates,python3,python3-cffi-backend,qemu-guest-agent,$WAY_IN \
    bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log"; grep -B5 -A20 "rror" "$rootfs/debootstrap/debootstrap.log" | tail -40; exit 1; }

step "kernel with a small initrd"
mkdir -p "$rootfs/etc/initramfs-tools/conf.d"
echo "MODULES=list" > "$rootfs/etc/initramfs-tools/conf.d/virtseed.conf"
printf 'virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n' >> "$rootfs/etc/initramfs-tools/modules"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
mount --bind /proc "$rootfs/proc" 2>/dev/null || true
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive chroot "$rootfs" \
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold \
    linux-image-cloud-amd64 initramfs-tools busybox-static >"$work/kernel.log" 2>&1 || { umount "$rootfs/proc" 2>/dev/null || true; tail -30 "$work/kernel.log"; exit 1; }
umount "$rootfs/proc" 2>/dev/null || true

step "initramfs: busybox, the virtio modules, guest/initramfs-init"
# The clone boots with this one (Debian's, also in /boot, stays for other boot paths).
kver=$(ls "$rootfs/lib/modules" | head -1)
ird=$work/initramfs
mkdir -p "$ird"/bin "$ird"/dev "$ird"/proc "$ird"/sys "$ird"/root
cp "$rootfs/bin/busybox" "$ird/bin/busybox"
install -m 0755 "$root/guest/initramfs-init" "$ird/init"
install -m 0755 "$root/guest/initramfs-udhcpc.sh" "$ird/udhcpc.sh"
# ext4 is built into Debian's cloud kernel; virtio_pci, virtio_blk and virtio_net are modules.
for mod in virtio_pci virtio_blk virtio_net; do
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$rootfs" modprobe -S "$kver" --show-depends "$mod"
done | awk '$1 == "insmod" { print $2 }' | awk '!seen[$0]++' | while read -r m; do
    rel=${m#/}
    mkdir -p "$ird/$(dirname "$rel")"
    cp "$rootfs/$rel" "$ird/$rel"
    echo "$rel" >> "$ird/modules"
done
grep -q virtio_blk "$ird/modules" || { echo "no virtio_blk module for $kver" >&2; exit 1; }
cp -r "$ird" "$rootfs/tmp/initramfs"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$rootfs" sh -c 'cd /tmp/initramfs && find . | cpio -o -H newc --quiet' > "$work/initrd.img"
rm -rf "$rootfs/tmp/initramfs"

step "salt-minion $SALT_VERSION from PyPI into /opt/salt"
# Built on this host (also Debian 12, the same Python) at the path it has in the guest.
source "$here/setup.sh" --functions-only
rm -rf /opt/salt
/usr/bin/python3 -m venv /opt/salt   # Debian's Python, as in the guest (not a pyenv shim)
/opt/salt/bin/pip install -q $(salt_deps "$SALT_VERSION")
/opt/salt/bin/pip install -q --no-deps --no-build-isolation "salt==$SALT_VERSION"
# GitPython serves gitfs and git_pillar, which a clone's minion does not use (the git state
# and module call the git CLI). The minion imports it at start when it is there: ~0.4 s under TCG.
/opt/salt/bin/pip uninstall -q -y gitpython gitdb smmap
mkdir -p "$rootfs/opt"
cp -a /opt/salt "$rootfs/opt/salt"
rm -rf /opt/salt

step "configuration: $WHAT, salt-minion unit, DHCP"
R=$rootfs

# The plain template (--plain): a minion that waits for a key from an SSH deploy, and sshd
# with password login for root and a host key made at first boot (one per clone).
plain_config() {
    sed -i -e '/virtseed-credentials/d' -e 's|^ConditionPathExists=.*|ConditionPathExists=/etc/salt/pki/minion/minion.pem|' \
        -e 's|^Description=.*|Description=Salt minion (virtseed plain test image)|' \
        "$R/etc/systemd/system/salt-minion.service"
    ln -sf /etc/systemd/system/salt-minion.service "$R/etc/systemd/system/multi-user.target.wants/salt-minion.service"
    rm -f "$R"/etc/ssh/ssh_host_*
    cat > "$R/etc/ssh/sshd_config.d/virtseed-plain.conf" <<'F'
# virtseed's plain TEST image: root logs in with the password `plain`.
PermitRootLogin yes
PasswordAuthentication yes
UseDNS no
HostKey /etc/ssh/ssh_host_ed25519_key
F
    cat > "$R/etc/systemd/system/ssh-hostkey.service" <<'F'
[Unit]
Description=This clone's own SSH host key (ed25519: instant even under TCG)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
[Install]
WantedBy=ssh.service
F
    mkdir -p "$R/etc/systemd/system/ssh.service.wants"
    ln -sf /etc/systemd/system/ssh-hostkey.service "$R/etc/systemd/system/ssh.service.wants/ssh-hostkey.service"
    ln -sf /lib/systemd/system/ssh.service "$R/etc/systemd/system/multi-user.target.wants/ssh.service"
}
echo "$NAME" > "$R/etc/hostname"
: > "$R/etc/machine-id"
# dbus's package scripts wrote a fixed id into /var/lib/dbus/machine-id, and systemd fills an
# empty /etc/machine-id from that file at first boot: every clone would get the same id (and
# the same DHCP DUID). As on a fresh Debian install, it is a link to /etc/machine-id, which
# systemd then fills from the VM's own SMBIOS UUID (each clone's domain UUID).
mkdir -p "$R/var/lib/dbus"
ln -sfn /etc/machine-id "$R/var/lib/dbus/machine-id"
rm -f "$R/etc/resolv.conf"
ln -sf /run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf" 2>/dev/null || true
cat > "$R/etc/fstab" <<'F'
/dev/vda / ext4 rw,relatime 0 1
F
if [ -z "$PLAIN" ]; then
# cloud-init: NoCloud only, no network config of its own (networkd does DHCP), no SSH keys.
# Two datasources, not one: with a single entry ds-identify enables cloud-init without
# looking; with two it searches, and a clone without a NoCloud seed (`seed: smbios`) boots
# with cloud-init disabled (~30 s of Python under TCG saved). ConfigDrive is never found here.
cat > "$R/etc/cloud/cloud.cfg.d/90-virtseed.cfg" <<'F'
datasource_list: [NoCloud, ConfigDrive]
network: {config: disabled}
# Only the modules a clone needs (each costs time under TCG). No salt_minion: the
# virtseed-credentials unit installs the identity from the same volume at the start of boot,
# and salt_minion would restart the minion that is already starting.
cloud_init_modules: [seed_random, bootcmd, write_files, set_hostname, update_hostname, update_etc_hosts, users_groups]
cloud_config_modules: [runcmd]
# cloud-final runs user-data's scripts and runcmd, and ends cloud-init (`cloud-init status`
# says done). It starts after the minion and gets the vCPU after it (StartupCPUWeight).
cloud_final_modules: [scripts-per-once, scripts-per-boot, scripts-per-instance, scripts-user, final-message]
ssh_genkeytypes: []
ssh_deletekeys: false
F
fi
mkdir -p "$R/etc/systemd/network"
cat > "$R/etc/systemd/network/20-dhcp.network" <<'F'
[Match]
Name=eth* en*
[Network]
DHCP=ipv4
# The initramfs already leased eth0's address (guest/initramfs-init): keep it, do not drop
# and re-add it under the starting minion's connection.
KeepConfiguration=dhcp
[DHCPv4]
# The client identifier busybox's udhcpc sends in the initramfs (1 + the MAC): the server
# keeps one lease per clone when networkd takes it over, and a warm clone, whose networkd
# kept the warm domain's machine-id (and so its DUID), asks with its own MAC's.
ClientIdentifier=mac
F
# cloud-init's salt_minion module runs `apt-get install salt-minion`: an empty sources list
# and a local shim package make that a no-op (salt lives in /opt/salt).
: > "$R/etc/apt/sources.list"
if [ -z "$PLAIN" ]; then
mkdir -p "$work/shim/DEBIAN"
cat > "$work/shim/DEBIAN/control" <<'F'
Package: salt-minion
Version: 9999-virtseed
Architecture: all
Maintainer: virtseed <root@localhost>
Description: shim: salt-minion is installed from PyPI in /opt/salt
F
dpkg-deb -b "$work/shim" "$R/var/tmp/salt-minion-shim.deb" >/dev/null
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$R" dpkg -i /var/tmp/salt-minion-shim.deb >/dev/null
rm -f "$R/var/tmp/salt-minion-shim.deb"
fi
mkdir -p "$R/etc/salt/pki/minion" "$R/etc/salt/minion.d"
chmod 700 "$R/etc/salt/pki/minion"
cat > "$R/etc/salt/minion.d/00-golden.conf" <<'F'
# Clone-fast defaults (docs/golden-images.md).
multiprocessing: false
acceptance_wait_time: 2
random_reauth_delay: 0
enable_fqdns_grains: false
enable_gpu_grains: false
grains_cache: true
# Grain modules that probe for storage a clone does not have (zfs alone: 1.2 s under TCG).
disable_grains: [zfs, lvm, mdadm]
# Reconnect to the master within a second, not Salt's randomised 7-17 s (a fresh clone may
# try before DHCP is done; there is no herd of thousands to spread out here).
recon_default: 1000
recon_max: 5000
recon_randomize: false
F
cat > "$R/etc/systemd/system/salt-minion.service" <<'F'
[Unit]
Description=Salt minion (virtseed golden image)
# Starts as soon as virtseed-credentials installed an identity, early in boot: not after
# basic.target (~7 s of other units under TCG), nor the network (the minion's imports take
# longer than DHCP, and it retries the master every second until it answers).
DefaultDependencies=no
Wants=virtseed-credentials.service
After=virtseed-credentials.service
Conflicts=shutdown.target
Before=shutdown.target
# Only with an identity from virtseed: a base booted on its own, or a clone without a seed,
# never starts a minion, so never makes a key. With a key from virtseed the minion uses it;
# without one (accept: on_first_auth) it makes its own and virtseed accepts that first key.
ConditionPathExists=/etc/salt/minion_id

[Service]
ExecStart=/opt/salt/bin/salt-minion
# Its errors on the serial console too: a clone that does not come up says why there.
StandardOutput=journal+console
StandardError=journal+console
Restart=on-failure
RestartSec=2
# First in line for the one vCPU while the system boots (cgroup v2 weight; default 100).
# StartupCPUWeight is meant to end with the boot, but on Debian 12's systemd 252 the cgroup
# keeps weight 1000 afterwards (seen in a booted clone): the minion's jobs keep the larger share.
StartupCPUWeight=1000

[Install]
WantedBy=multi-user.target
F
# And the services as a whole against PID 1 itself (init.scope, weight 100), which otherwise
# takes up to half the vCPU while it starts the other units.
mkdir -p "$R/etc/systemd/system/system.slice.d"
printf '[Slice]\nStartupCPUWeight=1000\n' > "$R/etc/systemd/system/system.slice.d/virtseed.conf"
if [ -n "$PLAIN" ]; then
    plain_config
else
mkdir -p "$R/etc/systemd/system/cloud-init.service.d"
# virtseed-credentials copies the NoCloud seed for cloud-init; once cloud-init's network stage
# has read it (the last to), it goes: cloud-init keeps its own copy in /var/lib/cloud/instance.
printf '[Service]\nExecStartPost=-/bin/rm -rf /var/lib/cloud/seed/nocloud\n' > "$R/etc/systemd/system/cloud-init.service.d/virtseed.conf"
install -m 0644 "$root/guest/virtseed-credentials.service" "$R/etc/systemd/system/"
install -D -m 0755 "$root/guest/virtseed-credentials.sh" "$R/usr/local/lib/virtseed/virtseed-credentials"
for u in salt-minion.service virtseed-credentials.service; do
    ln -sf "/etc/systemd/system/$u" "$R/etc/systemd/system/multi-user.target.wants/$u"
done
# Warm clones (docs/golden-images.md): udev starts virtseed-warm.service when the port
# org.virtseed.warm.0 appears, which only the domain virtseed boots to save a warm state has.
install -m 0644 "$root/guest/virtseed-warm.service" "$R/etc/systemd/system/"
install -m 0644 "$root/guest/99-virtseed-warm.rules" "$R/etc/udev/rules.d/"
install -D -m 0755 "$root/guest/virtseed-warm" "$R/usr/local/lib/virtseed/virtseed-warm"
fi
ln -sf /lib/systemd/system/systemd-networkd.service "$R/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
# Not needed in a clone and slow under TCG.
# Logins (logind, gettys, utmp): the image has no SSH and root's password is locked, so no
# one logs in; the minion is the way in. ~1 s of the vCPU at boot.
# Early-boot units a VM does not need (module preloads for DRM, FUSE, loop devices, binfmt,
# debug filesystems): each costs ~0.5-1 s of the single vCPU under TCG.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
         modprobe@drm.service modprobe@fuse.service modprobe@loop.service modprobe@dm_mod.service \
         modprobe@efi_pstore.service modprobe@configfs.service systemd-binfmt.service \
         proc-sys-fs-binfmt_misc.automount sys-kernel-debug.mount sys-kernel-tracing.mount \
         sys-fs-fuse-connections.mount sys-kernel-config.mount dev-hugepages.mount \
         getty@.service serial-getty@.service systemd-update-utmp.service systemd-update-utmp-runlevel.service \
         $([ -n "$PLAIN" ] || echo systemd-logind.service systemd-user-sessions.service); do
    ln -sf /dev/null "$R/etc/systemd/system/$u"
done
# systemd's generators run one after another before any unit starts, each ~0.1 s under TCG:
# keep fstab's and cloud-init's, drop those for disk encryption, dm-verity/integrity, GPT
# auto-mounts, hibernation, boot counting, SysV scripts, gettys and debug switches.
mkdir -p "$R/etc/systemd/system-generators"
for g in systemd-cryptsetup-generator systemd-veritysetup-generator systemd-integritysetup-generator \
         systemd-gpt-auto-generator systemd-hibernate-resume-generator systemd-bless-boot-generator \
         systemd-system-update-generator systemd-sysv-generator systemd-getty-generator \
         systemd-debug-generator systemd-run-generator; do
    ln -sf /dev/null "$R/etc/systemd/system-generators/$g"
done
if [ -n "$PLAIN" ]; then
    echo 'root:plain' | chroot "$R" chpasswd
else
    echo 'root:*' | chroot "$R" chpasswd -e 2>/dev/null || true
fi
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$R" apt-get clean
rm -rf "$R/var/lib/apt/lists/"* "$R/usr/share/doc/"* "$R/usr/share/man/"* "$R/var/cache/debconf/"*-old

step "disk image (mkfs.ext4 -d, no loop mount) and qcow2"
mkdir -p "$img.tmp"
cp "$R"/boot/vmlinuz-* "$img.tmp/vmlinuz"
cp "$work/initrd.img" "$img.tmp/initrd.img"
mkfs.ext4 -q -L root -d "$R" "$work/disk.raw" 3G
qemu-img convert -O qcow2 -c "$work/disk.raw" "$img.tmp/disk.qcow2"
chmod 644 "$img.tmp"/*
rm -rf "$img"; mv "$img.tmp" "$img"
chmod 755 "$img"
echo "    $(du -h "$img/disk.qcow2" | cut -f1) qcow2, initrd $(du -h "$img/initrd.img" | cut -f1), built in $(( $(date +%s) - t0 )) s"
define_domain
