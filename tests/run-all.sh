#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, unit and whole-stack tests (including
# the real Linux guests under QEMU). Installs the system packages it needs when run as
# root on Debian; elsewhere it expects them to be there.
#
#   bash tests/run-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=()
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
    command -v cpio >/dev/null || need+=(cpio)
    command -v modinfo >/dev/null || need+=(kmod)
    command -v ip >/dev/null || need+=(iproute2)
    # systemd-socket-activate starts a backend the way systemd does (tests/deployment.rs).
    command -v systemd-socket-activate >/dev/null || need+=(systemd)
    # DPDK testpmd and the PMDs it loads as plug-ins (tests/dpdk_net.rs).
    command -v dpdk-testpmd >/dev/null || need+=(dpdk-dev)
    for pmd in librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23; do
        dpkg -s "$pmd" >/dev/null 2>&1 || need+=("$pmd")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "run-all: installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        flock /tmp/apt.lock apt-get update -q
        flock /tmp/apt.lock apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

# The guest kernel and initramfs, built once and cached under target/guest.
bash tests/guest/build-guest.sh
# The QEMU the live-migration tests run (9.0 or later; the script says why).
bash tests/guest/fetch-migration-qemu.sh

echo "run-all: cargo fmt --check"
cargo fmt --all --check
echo "run-all: cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "run-all: cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo "run-all: cargo test"
# QEMU guests take a whole core each; the guest support serialises them with a lock,
# and two test threads leave room for the backend processes.
cargo test --workspace --lib --bins --tests --examples -- --test-threads=2
# The criterion benches, once each in test mode (they take no libtest options).
cargo test --workspace --benches
cargo test --workspace --doc
