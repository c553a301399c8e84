#!/bin/bash
# Fetch the QEMU that the live-migration tests run (tests/guest_migration.rs).
#
#   bash tests/guest/fetch-migration-qemu.sh
#
# Why a second QEMU: before 9.0, QEMU's TCG lost guest writes during a live
# migration. After each dirty-bitmap sync, pages the vCPU had already dirtied kept
# a fast write path in the TCG TLB, so later writes to them were never logged and
# never sent again. The destination then ran with stale pages, and its kernel
# crashed now and then, with no vhost-user device involved at all. QEMU fixed this
# in 9.0 (commit 03bfc2188f, "physmem: Fix migration dirty bitmap coherency with
# TCG memory access"). Debian 12's QEMU is 7.2 and lacks the fix. A guest on KVM
# is not affected, but KVM is not available on these machines.
#
# So this script takes qemu-system-x86 from bookworm-backports. It unpacks the
# package into a folder of its own with dpkg-deb, which runs no maintainer script
# and leaves the system's QEMU alone. Its package lists are kept in that folder
# too, so the machine's apt sources are not changed.
#
# Safe to run any number of times: work already done is skipped.
#
# Output directory (first that is set):
#   $VHU_GUEST_DIR/migration-qemu
#   $CARGO_TARGET_DIR/guest/migration-qemu
#   <repository>/target/guest/migration-qemu
# The last line printed is VHU_MIGRATION_QEMU=<binary>. The firmware folder to
# pass with -L is <folder>/root/usr/share/qemu.
#
# Environment:
#   VHU_MIGRATION_SUITE   the Debian suite to take QEMU from (default bookworm-backports)
set -euo pipefail

say() { echo "fetch-migration-qemu: $*" >&2; }
die() { say "error: $*"; exit 1; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=guest-dir.sh
. "$SCRIPT_DIR/guest-dir.sh"
GUEST=$GUEST_DIR
OUT=$GUEST/migration-qemu
SUITE=${VHU_MIGRATION_SUITE:-bookworm-backports}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BIN=$OUT/root/usr/bin/qemu-system-x86_64
[ -f "$GUEST/.gitignore" ] || echo '*' > "$GUEST/.gitignore"

# Several test processes may call this script at once: one fetches, the others wait.
exec 9>"$OUT/.fetch.lock"
flock 9

# QEMU's major version; the fix is in 9.0 and later.
major_of() { "$1" --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p'; }

if [ -x "$BIN" ] && [ "$(major_of "$BIN")" -ge 9 ] 2>/dev/null; then
    echo "VHU_MIGRATION_QEMU=$BIN"
    exit 0
fi

command -v apt-get >/dev/null || die "apt-get is needed (Debian or a derivative)"
command -v dpkg-deb >/dev/null || die "dpkg-deb is needed"

APT=(-o "Dir::Etc::SourceList=$OUT/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$OUT/lists" -o "Dir::Cache=$OUT/cache"
    -o "Debug::NoLocking=1" -q)
mkdir -p "$OUT/lists/partial" "$OUT/cache/archives/partial" "$OUT/debs"
echo "deb http://deb.debian.org/debian $SUITE main" > "$OUT/sources.list"
say "reading the package lists of $SUITE"
apt-get "${APT[@]}" update >&2 || die "apt-get update for $SUITE failed"

rm -f "$OUT"/debs/*.deb
say "downloading qemu-system-x86, qemu-system-common and qemu-system-data from $SUITE"
# apt-get download writes into the current directory. As root it warns that the
# download runs unsandboxed; that is harmless.
(cd "$OUT/debs" && apt-get "${APT[@]}" download \
    "qemu-system-x86/$SUITE" "qemu-system-common/$SUITE" "qemu-system-data/$SUITE" >&2) ||
    die "apt-get download from $SUITE failed"

rm -rf "$OUT/root.tmp"
mkdir -p "$OUT/root.tmp"
for deb in "$OUT"/debs/*.deb; do
    dpkg-deb -x "$deb" "$OUT/root.tmp"
done
rm -rf "$OUT/root"
mv "$OUT/root.tmp" "$OUT/root"

missing=$(ldd "$BIN" | awk '/not found/ { print $1 }' | tr '\n' ' ')
[ -z "$missing" ] || die "$BIN needs libraries this machine lacks: $missing"
major=$(major_of "$BIN")
[ -n "$major" ] && [ "$major" -ge 9 ] || die "$SUITE has QEMU $major; the migration tests need 9.0 or later"
say "$("$BIN" --version | head -n 1)"
echo "VHU_MIGRATION_QEMU=$BIN"
