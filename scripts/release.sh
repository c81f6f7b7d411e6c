#!/usr/bin/env bash
# Builds virtseed's release artifacts from this checkout, for hosts with no Rust, no
# compiler and no -dev packages:
#
#   dist/release/virtseed-VERSION-py3-none-manylinux_2_31_x86_64.whl
#       `pip install` / `salt-pip install`: the binary and the Salt extension saltext.virtseed
#   dist/release/virtseed_VERSION_amd64.deb
#       /usr/bin/virtseed, the systemd units, the Salt modules in /usr/lib/virtseed/salt with a
#       master drop-in that points Salt at them, a commented /etc/salt/virtseed
#   dist/release/SHA256SUMS
#
# The binary is linked by zig against glibc 2.31 (Debian 11, Ubuntu 20.04 and everything
# newer) and loads libvirt's client library from the system (Debian/Ubuntu `libvirt0`):
# the script prints the highest glibc and libvirt symbol versions it needs and every shared
# library it loads, and fails if it needs more than the artifacts claim.
#
#   scripts/release.sh               cargo's release profile (what you ship)
#   PROFILE=dev scripts/release.sh   the same artifacts from the dev profile (the tests')
#   OUT=DIR scripts/release.sh       somewhere else than dist/release
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

GLIBC_FLOOR=2.31
# Shared libraries the binary may load: glibc's, libgcc's, and libvirt's client (libvirt0).
ALLOWED_LIBS="libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libgcc_s.so.1 ld-linux-x86-64.so.2 libvirt.so.0 libvirt-qemu.so.0"
profile=${PROFILE:-release}
out=${OUT:-dist/release}
case "$out" in /*) ;; *) out=$root/$out ;; esac
cache=${VIRTSEED_CACHE:-$HOME/.cache/virtseed}
venv=$cache/release-venv

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || { echo "no version in Cargo.toml" >&2; exit 1; }

need_tools() {
    local missing=()
    command -v cargo >/dev/null || missing+=("cargo (scripts/setup.sh installs Rust)")
    command -v dpkg-deb >/dev/null || missing+=("dpkg-deb")
    command -v objdump >/dev/null || missing+=("objdump (binutils)")
    pkg-config --exists libvirt 2>/dev/null || missing+=("libvirt's headers (libvirt-dev)")
    if [ ${#missing[@]} -gt 0 ]; then
        echo "release.sh needs: ${missing[*]}" >&2
        exit 1
    fi
    if ! [ -x "$venv/bin/maturin" ] || ! "$venv/bin/python" -c 'import ziglang' 2>/dev/null; then
        step "maturin and zig (from PyPI) in $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q 'maturin>=1.5,<2' 'ziglang'
    fi
}

build_wheel() {
    local args=(--zig --compatibility "manylinux_${GLIBC_FLOOR/./_}" --auditwheel skip
        --target x86_64-unknown-linux-gnu -o "$out")
    if [ "$profile" = release ]; then args+=(--release); else args+=(--profile "$profile"); fi
    step "wheel: maturin build ${args[*]}"
    # Its own target dir: the tests run this tree's target/debug/virtseed meanwhile.
    CARGO_TARGET_DIR=$root/target/release-artifacts PATH="$venv/bin:$PATH" \
        maturin build "${args[@]}" >&2
}

# The highest version of `prefix` (GLIBC_, LIBVIRT_) among the binary's dynamic symbols.
highest() { objdump -T "$1" | grep -o "$2[0-9.]*" | sed "s/^$2//" | sort -uV | tail -1; }

check_floor() {
    local bin=$1 glibc libvirt libs bad=""
    glibc=$(highest "$bin" GLIBC_)
    libvirt=$(highest "$bin" LIBVIRT_)
    libs=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
    echo "binary: glibc $glibc (floor $GLIBC_FLOOR); libvirt $libvirt; loads: $libs"
    if [ "$(printf '%s\n%s\n' "$glibc" "$GLIBC_FLOOR" | sort -V | tail -1)" != "$GLIBC_FLOOR" ]; then
        echo "the binary needs glibc $glibc, above the floor $GLIBC_FLOOR its tags claim" >&2
        exit 1
    fi
    for l in $libs; do
        case " $ALLOWED_LIBS " in *" $l "*) ;; *) bad="$bad $l" ;; esac
    done
    if [ -n "$bad" ]; then
        echo "the binary loads libraries its package does not depend on:$bad" >&2
        exit 1
    fi
    printf '%s\n' "$glibc" > "$out/.glibc"
    printf '%s\n' "$libvirt" > "$out/.libvirt"
}

build_deb() {
    local bin=$1 libvirt=$2 stage deb
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' RETURN
    step "Debian package"
    install -D -m 0755 "$bin" "$stage/usr/bin/virtseed"
    install -D -m 0644 dist/systemd/virtseed.service "$stage/usr/lib/systemd/system/virtseed.service"
    install -D -m 0644 dist/systemd/virtseed@.service "$stage/usr/lib/systemd/system/virtseed@.service"
    "$bin" install-runner --into "$stage/usr/lib/virtseed/salt" >/dev/null
    install -D -m 0644 dist/debian/master.d-virtseed.conf "$stage/etc/salt/master.d/virtseed.conf"
    install -D -m 0644 dist/debian/virtseed.settings "$stage/etc/salt/virtseed"
    install -D -m 0644 dist/debian/copyright "$stage/usr/share/doc/virtseed/copyright"
    mkdir -p "$stage/DEBIAN"
    install -m 0755 dist/debian/postinst "$stage/DEBIAN/postinst"
    printf '/etc/salt/virtseed\n/etc/salt/master.d/virtseed.conf\n' > "$stage/DEBIAN/conffiles"
    cat > "$stage/DEBIAN/control" <<EOF
Package: virtseed
Version: $version
Architecture: amd64
Maintainer: virtseed developers <virtseed@localhost>
Depends: libc6 (>= $GLIBC_FLOOR), libgcc-s1 | libgcc1, libvirt0 (>= $libvirt)
Suggests: salt-master
Section: admin
Priority: optional
Installed-Size: $(du -sk "$stage" | cut -f1)
Homepage: https://github.com/virtseed/virtseed
Description: Salt master sidecar that clones libvirt VMs with pre-accepted minion keys
 virtseed joins the Salt master's ZeroMQ bus as an authenticated peer and answers
 salt-cloud and salt-run cloud.* by cloning libvirt domains whose minion keys it
 mints and pre-accepts, so a new VM answers 'salt NAME test.ping' the moment its
 minion starts. This package carries the binary, its systemd units and its Salt
 modules (found by the master through /etc/salt/master.d/virtseed.conf).
EOF
    deb="$out/virtseed_${version}_amd64.deb"
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
}

need_tools
rm -rf "$out"
mkdir -p "$out"
build_wheel
whl=$(ls "$out"/virtseed-"$version"-*.whl)
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
python3 -m zipfile -e "$whl" "$unpacked"
bin=$unpacked/virtseed-$version.data/scripts/virtseed
chmod +x "$bin"
[ "$("$bin" --version)" = "virtseed $version" ] || {
    echo "the binary says $("$bin" --version), not virtseed $version" >&2
    exit 1
}
check_floor "$bin"
build_deb "$bin" "$(cat "$out/.libvirt")"
rm -f "$out/.glibc" "$out/.libvirt"
(cd "$out" && sha256sum -- *.whl *.deb > SHA256SUMS)
step "artifacts in $out"
cat "$out/SHA256SUMS"
