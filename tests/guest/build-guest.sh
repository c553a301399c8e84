#!/bin/bash
# Build the Linux test guest used by the QEMU integration tests.
#
#   bash tests/guest/build-guest.sh
#
# Safe to run any number of times: work already done is skipped.
#
# Output directory (first that is set):
#   $VHU_GUEST_DIR
#   $CARGO_TARGET_DIR/guest
#   <repository>/target/guest
# It receives:
#   vmlinuz              a Debian 12 cloud kernel (virtio drivers built as modules)
#   initramfs.cpio.gz    static busybox + the virtio modules + tests/guest/init as /init
#   kernel-version       the kernel release string
#   kernel/              the kernel .deb and the modules taken from it
#
# Environment:
#   VHU_SKIP_APT=1       never call apt-get install (the host tools must be present)
#   VHU_KERNEL_FLAVOUR   Debian kernel flavour (default cloud-amd64, a ~26 MB package)
#
# Host tools: qemu-system-x86_64, busybox (static), cpio, modinfo (kmod), gzip,
# dpkg-deb and apt-get (Debian or a derivative).
set -euo pipefail

say() { echo "build-guest: $*" >&2; }
die() { say "error: $*"; exit 1; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
INIT_SRC=$SCRIPT_DIR/init

# shellcheck source=guest-dir.sh
. "$SCRIPT_DIR/guest-dir.sh"
OUT=$GUEST_DIR
FLAVOUR=${VHU_KERNEL_FLAVOUR:-cloud-amd64}

# Kernel modules the guest loads; their dependencies are added automatically.
# To support another device, append its driver here.
WANTED_MODULES="virtio virtio_ring virtio_pci virtio_net virtio_blk virtio_rng"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# Everything in here is generated: keep it out of version control.
[ -f "$OUT/.gitignore" ] || echo '*' > "$OUT/.gitignore"

# Several test processes may call this script at once: one builds, the others wait.
exec 9>"$OUT/.build.lock"
flock 9

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo -n "$@"
    else die "need root for: $*"
    fi
}

# apt-get under a machine-wide lock, so that parallel installers queue up
# instead of failing on dpkg's own lock.
apt_locked() {
    as_root env DEBIAN_FRONTEND=noninteractive flock /tmp/apt.lock apt-get "$@"
}

APT_UPDATED=0
apt_refresh() {
    if [ "$APT_UPDATED" = 0 ]; then
        say "refreshing the apt package lists"
        apt_locked update -q >&2 || say "apt-get update failed"
        APT_UPDATED=1
    fi
}

apt_install() {
    say "installing: $*"
    if ! apt_locked install -y -q --no-install-recommends "$@" >&2; then
        apt_refresh
        apt_locked install -y -q --no-install-recommends "$@" >&2
    fi
}

busybox_is_static() {
    [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1
}

# ---------------------------------------------------------------- host tools
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
busybox_is_static || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
command -v modinfo >/dev/null || [ -x /sbin/modinfo ] || missing+=(kmod)
command -v gzip >/dev/null || missing+=(gzip)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "${VHU_SKIP_APT:-0}" = 1 ]; then
        die "missing host packages (VHU_SKIP_APT=1 forbids installing them): ${missing[*]}"
    fi
    apt_install "${missing[@]}"
fi
busybox_is_static || die "/bin/busybox is missing or dynamically linked (install busybox-static)"
MODINFO=$(command -v modinfo || echo /sbin/modinfo)

# ---------------------------------------------------------------- kernel
KDIR=$OUT/kernel
mkdir -p "$KDIR"

kernel_package() {
    # linux-image-cloud-amd64 is a metapackage; the first linux-image-* it
    # depends on is the versioned image package.
    apt-cache depends "linux-image-$FLAVOUR" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}

fetch_kernel_deb() {
    local pkg
    pkg=$(kernel_package)
    if [ -z "$pkg" ]; then
        apt_refresh
        pkg=$(kernel_package)
    fi
    [ -n "$pkg" ] || die "cannot resolve linux-image-$FLAVOUR with apt-cache"
    say "downloading $pkg"
    rm -f "$KDIR"/*.deb
    # apt-get download writes into the current directory. As root it warns
    # that the download runs unsandboxed; that is harmless.
    if ! (cd "$KDIR" && apt-get download -q "$pkg" >&2); then
        apt_refresh
        pkg=$(kernel_package)
        (cd "$KDIR" && apt-get download -q "$pkg" >&2) || die "apt-get download $pkg failed"
    fi
}

deb_file() { ls "$KDIR"/linux-image-*.deb 2>/dev/null | head -n 1; }

# Unpack the package into a scratch tree (no maintainer scripts run, /boot is
# untouched), keep vmlinuz and the wanted modules, drop the rest.
extract_kernel() {
    local deb=$1 tree=$KDIR/unpacked kver mdir
    rm -rf "$tree" "$KDIR/modules"
    mkdir -p "$tree" "$KDIR/modules"
    dpkg-deb -x "$deb" "$tree"
    mdir=$(find "$tree" -maxdepth 4 -type d -path '*/lib/modules/*' | head -n 1)
    [ -n "$mdir" ] || die "no lib/modules in $deb"
    kver=$(basename "$mdir")
    [ -f "$tree/boot/vmlinuz-$kver" ] || die "no boot/vmlinuz-$kver in $deb"

    # Resolve dependencies depth first, so that load-order lists every module
    # after the modules it needs.
    declare -A done_mods=()
    local order=()
    find_ko() {
        local dashed=${1//_/-}
        find "$mdir" -type f \( -name "$1.ko" -o -name "$1.ko.xz" -o -name "$1.ko.zst" \
            -o -name "$dashed.ko" -o -name "$dashed.ko.xz" -o -name "$dashed.ko.zst" \) | head -n 1
    }
    take() {
        local name=$1 file dep
        [ -z "${done_mods[$name]:-}" ] || return 0
        done_mods[$name]=1
        file=$(find_ko "$name")
        if [ -z "$file" ]; then
            # built into the kernel image: nothing to load
            grep -qE "/(${name}|${name//_/-})\.ko\$" "$mdir/modules.builtin" && return 0
            die "kernel $kver has no module $name"
        fi
        for dep in $("$MODINFO" -F depends "$file" | tr ',' ' '); do
            take "$dep"
        done
        case "$file" in
            *.xz) xz -dc "$file" > "$KDIR/modules/$name.ko" ;;
            *.zst) zstd -qdc "$file" > "$KDIR/modules/$name.ko" ;;
            *) cp "$file" "$KDIR/modules/$name.ko" ;;
        esac
        order+=("$name")
    }
    local m
    for m in $WANTED_MODULES; do take "$m"; done
    printf '%s\n' "${order[@]}" > "$KDIR/modules/load-order"

    cp "$tree/boot/vmlinuz-$kver" "$OUT/vmlinuz.tmp"
    mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
    echo "$kver" > "$OUT/kernel-version"
    echo "$WANTED_MODULES" > "$KDIR/wanted-modules"
    rm -rf "$tree"
    say "kernel $kver, modules: ${order[*]}"
}

need_extract=0
[ -f "$OUT/vmlinuz" ] && [ -f "$OUT/kernel-version" ] && [ -f "$KDIR/modules/load-order" ] || need_extract=1
# A changed module list only needs the .deb unpacked again, not downloaded.
[ "$(cat "$KDIR/wanted-modules" 2>/dev/null)" = "$WANTED_MODULES" ] || need_extract=1
if [ "$need_extract" = 1 ]; then
    [ -n "$(deb_file)" ] || fetch_kernel_deb
    extract_kernel "$(deb_file)"
fi
KVER=$(cat "$OUT/kernel-version")

# ---------------------------------------------------------------- initramfs
INITRD=$OUT/initramfs.cpio.gz
rebuild=0
[ -f "$INITRD" ] || rebuild=1
for src in "$INIT_SRC" "${BASH_SOURCE[0]}" "$KDIR/modules/load-order" /bin/busybox; do
    if [ "$src" -nt "$INITRD" ]; then rebuild=1; fi
done
if [ "$rebuild" = 1 ]; then
    root=$OUT/initramfs.root
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,mnt,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    cp "$KDIR"/modules/*.ko "$KDIR/modules/load-order" "$root/lib/modules/"
    install -m 0755 "$INIT_SRC" "$root/init"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z |
        cpio --null --create --format=newc --quiet) | gzip -9 > "$INITRD.tmp"
    mv "$INITRD.tmp" "$INITRD"
    rm -rf "$root"
    say "built $INITRD ($(du -h "$INITRD" | cut -f1))"
fi

say "ready: $OUT (kernel $KVER)"
echo "VHU_GUEST_DIR=$OUT"
