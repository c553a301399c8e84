#!/usr/bin/env bash
# Our backends next to established vhost-user backends, driven by the same load
# generator (examples/bench, a VMM-like frontend) with the same settings, and one table of
# ratios (ours / peer):
#
#   rng  rng_backend            vs vhost-device-rng (rust-vmm, crates.io)
#   blk  blk_backend            vs qemu-storage-daemon --export type=vhost-user-blk
#                               (raw image in tmpfs; 4 KiB randread/randwrite, QD1/QD32)
#   net  net_backend --backend null vs dpdk-testpmd's vhost PMD (net_vhost0): frames
#                               into the backend (TX) and out of it (RX)
#
# Every point starts a fresh backend (vhost-device-rng 0.1 only serves the first
# connection of a process correctly), runs the bench for RUNTIME seconds, and stops the
# backend again; ours and the peer alternate, REPEAT rounds, and the table shows the
# median over the rounds. Backends run pinned to CPU $BE_CPU, the bench to CPU $FE_CPU.
#
#   bash benches/compare.sh
#
# By default the script holds /tmp/cargo.lock for its whole run so that builds of the same
# tree stay off the CPUs while it measures (so do not run it under `flock` yourself). As root on
# Debian it installs what it needs: qemu-system-common (qemu-storage-daemon), dpdk-dev
# and the DPDK PMD plug-ins (apt), vhost-device-rng (cargo install, into $PEERS_ROOT).
#
# Environment (defaults in brackets):
#   RUNTIME   seconds per run [4]               REPEAT  rounds [3]
#   ROWS      which rows ["rng blk net"]        QSIZE   ring size for every backend [256]
#   BLK_SIZE  image size [256M]                 BE_CPU / FE_CPU  [0 / 1]
#   BLK_MEDIA tmpfs: image in /dev/shm, page cache on both sides; disk: image in WORK on
#             the machine's disk, O_DIRECT on both sides (blk_backend --direct;
#             qemu-storage-daemon cache.direct=on,aio=io_uring) [tmpfs]
#   BLK_AIO   blk_backend --aio auto|io-uring|sync [auto]
#   BLK_QUEUES request queues on both sides (ours with --worker-per-queue when more than
#             one; the bench spreads its depth over them) [1]
#   NET_DPDK  1: also run benches/net_dpdk.sh (DPDK virtio-user as the client) [0]
#   POLL_US   --busy-poll-us of net_backend in the polling net rows [50]
#   PEERS_ROOT  where cargo installs the Rust peers [/tmp/peers/cargo]
#   WORK      scratch directory (sockets, images, logs, JSON results) [/tmp/vu-compare]
#   LOCK      the build lock [/tmp/cargo.lock]
#   LOCK_MODE run: hold LOCK for the whole run; builds: only while building (the
#             measurement may then share the CPUs with builds); none [run]
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-4}
REPEAT=${REPEAT:-3}
ROWS=${ROWS:-rng blk net}
QSIZE=${QSIZE:-256}
BLK_SIZE=${BLK_SIZE:-256M}
BE_CPU=${BE_CPU:-0}
FE_CPU=${FE_CPU:-1}
NET_DPDK=${NET_DPDK:-0}
POLL_US=${POLL_US:-50}
OURS_ARGS=
PEERS_ROOT=${PEERS_ROOT:-/tmp/peers/cargo}
WORK=${WORK:-/tmp/vu-compare}
LOCK=${LOCK:-/tmp/cargo.lock}
LOCK_MODE=${LOCK_MODE:-run}

log() { echo "compare: $*" >&2; }
has() { case " $ROWS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# cargo runs through CARGO: under the lock when the script does not hold it throughout.
CARGO=(cargo)
case "$LOCK_MODE" in
run)
    exec 9>"$LOCK"
    if ! flock -n 9; then
        log "waiting for $LOCK (a build is running)"
        flock 9
    fi ;;
builds) CARGO=(flock "$LOCK" cargo) ;;
none) ;;
*) log "LOCK_MODE must be run, builds or none"; exit 1 ;;
esac

# --- what it needs -------------------------------------------------------------------
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=()
    command -v taskset >/dev/null || need+=(util-linux)
    if has blk; then
        command -v qemu-storage-daemon >/dev/null || need+=(qemu-system-common)
    fi
    if has net || [ "$NET_DPDK" = 1 ]; then
        command -v dpdk-testpmd >/dev/null || need+=(dpdk-dev)
        for p in librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23; do
            dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
        done
    fi
    if [ ${#need[@]} -gt 0 ]; then
        log "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        flock /tmp/apt.lock apt-get update -q
        flock /tmp/apt.lock apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
fi
VDR=$PEERS_ROOT/bin/vhost-device-rng
if has rng && ! [ -x "$VDR" ]; then
    if command -v vhost-device-rng >/dev/null; then
        VDR=$(command -v vhost-device-rng)
    else
        log "installing vhost-device-rng into $PEERS_ROOT"
        CARGO_TARGET_DIR=${PEERS_TARGET:-/tmp/peers/target} \
            "${CARGO[@]}" install --locked --quiet --root "$PEERS_ROOT" vhost-device-rng
    fi
fi
for tool in taskset stdbuf cargo; do
    command -v "$tool" >/dev/null || { log "$tool missing"; exit 1; }
done

examples=(--example bench)
has rng && examples+=(--example rng_backend)
has net && examples+=(--example net_backend)
HAVE_BLK=0
if has blk && [ -f examples/blk_backend.rs ]; then
    HAVE_BLK=1
    examples+=(--example blk_backend)
fi
log "building ${examples[*]}"
"${CARGO[@]}" build --quiet --release "${examples[@]}"
TARGET=$("${CARGO[@]}" metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/examples
BENCH=$TARGET/bench

mkdir -p "$WORK"
rm -f "$WORK"/*.json "$WORK"/*.sock* "$WORK"/results
BEPID=""
cleanup() {
    [ -n "$BEPID" ] && kill -INT "$BEPID" 2>/dev/null
    wait 2>/dev/null || true
    local run=/var/run
    [ "$(id -u)" = 0 ] || run=${XDG_RUNTIME_DIR:-/tmp}
    rm -rf "$run/dpdk/vucmp$$"
    rm -f "${IMG:-}"
}
trap cleanup EXIT

# start_backend LOG SOCKET CMD...: starts CMD pinned to BE_CPU, waits for SOCKET.
start_backend() {
    local logf=$1 sock=$2
    shift 2
    rm -f "$sock"
    taskset -c "$BE_CPU" "$@" >"$logf" 2>&1 &
    BEPID=$!
    for _ in $(seq 300); do
        [ -S "$sock" ] && return 0
        kill -0 "$BEPID" 2>/dev/null || break
        sleep 0.1
    done
    log "backend did not listen on $sock; log:"
    tail -20 "$logf" >&2
    exit 1
}

stop_backend() {
    kill -INT "$BEPID" 2>/dev/null || true
    local i
    for i in $(seq 50); do
        kill -0 "$BEPID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$BEPID" 2>/dev/null || true
    wait "$BEPID" 2>/dev/null || true
    BEPID=""
}

# start KIND WHO: the backend of a row; prints nothing, sets SOCK.
BLK_MEDIA=${BLK_MEDIA:-tmpfs}
BLK_AIO=${BLK_AIO:-auto}
BLK_QUEUES=${BLK_QUEUES:-1}
BLK_PER_QUEUE=()
[ "$BLK_QUEUES" -gt 1 ] && BLK_PER_QUEUE=(--worker-per-queue)
case "$BLK_MEDIA" in
tmpfs) IMG=/dev/shm/vu-compare-$$.img; OURS_BLK=(); QSD_CACHE="cache.direct=off,aio=threads" ;;
disk) IMG=$WORK/vu-compare-$$.img; OURS_BLK=(--direct); QSD_CACHE="cache.direct=on,aio=io_uring" ;;
*) echo "compare: BLK_MEDIA must be tmpfs or disk" >&2; exit 1 ;;
esac
start() {
    local kind=$1 who=$2 logf=$WORK/$1-$2.log
    case "$kind-$who" in
    rng-ours)
        SOCK=$WORK/rng.sock
        # shellcheck disable=SC2086 # OURS_ARGS are words
        RUST_LOG=warn start_backend "$logf" "$SOCK" "$TARGET/rng_backend" --socket-path "$SOCK" $OURS_ARGS ;;
    rng-peer)
        # vhost-device-rng appends the socket index.
        SOCK=$WORK/vdr.sock0
        RUST_LOG=warn start_backend "$logf" "$SOCK" "$VDR" --socket-path "$WORK/vdr.sock" ;;
    blk-ours)
        SOCK=$WORK/blk.sock
        RUST_LOG=warn start_backend "$logf" "$SOCK" "$TARGET/blk_backend" --socket-path "$SOCK" \
            --image "$IMG" --queues "$BLK_QUEUES" "${BLK_PER_QUEUE[@]}" --aio "$BLK_AIO" \
            "${OURS_BLK[@]}" ;;
    blk-peer)
        SOCK=$WORK/qsd.sock
        start_backend "$logf" "$SOCK" qemu-storage-daemon \
            --blockdev "driver=file,node-name=file0,filename=$IMG,$QSD_CACHE" \
            --blockdev driver=raw,node-name=disk0,file=file0 \
            --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=$BLK_QUEUES" ;;
    net-ours)
        SOCK=$WORK/net.sock
        # shellcheck disable=SC2086 # OURS_ARGS are words
        RUST_LOG=warn start_backend "$logf" "$SOCK" "$TARGET/net_backend" --backend null \
            --socket-path "$SOCK" --frame-len 64 $OURS_ARGS ;;
    net-peer-tx | net-peer-rx)
        # The DPDK backend receives what the bench sends (rxonly) or sends (txonly) what
        # it receives; two lcores on one CPU as on the bench's other side.
        local mode=rxonly
        [ "$who" = peer-rx ] && mode=txonly
        SOCK=$WORK/dpdk.sock
        start_backend "$logf" "$SOCK" stdbuf -oL dpdk-testpmd --lcores="0@$BE_CPU,1@$BE_CPU" \
            --no-huge -m 512 --no-pci --no-telemetry --file-prefix="vucmp$$" \
            --vdev "net_vhost0,iface=$SOCK,queues=1,client=0" -- --nb-cores=1 \
            --forward-mode=$mode --txpkts=64 --stats-period=1 --rxd="$QSIZE" --txd="$QSIZE" \
            --total-num-mbufs=32768 ;;
    *) log "unknown backend $kind-$who"; exit 1 ;;
    esac
}

# point NAME KIND WHO BENCH-ARGS...: one run; the JSON result goes to $WORK/NAME-WHO-ROUND.json.
point() {
    local name=$1 kind=$2 who=$3 round=$4
    shift 4
    start "$kind" "$who"
    local out=$WORK/$name-${who%%-*}-$round.json
    if ! taskset -c "$FE_CPU" "$BENCH" "$kind" --socket "$SOCK" --runtime "$RUNTIME" \
        --queue-size "$QSIZE" --json -q "$@" >"$out" 2>"$out.err"; then
        log "$name ($who): bench failed: $(tail -1 "$out.err")"
        : >"$out"
    fi
    stop_backend
}

# field FILE KEY: a number from a result (the first occurrence of "KEY": N).
field() {
    sed -n "s/.*\"$2\": \([-0-9.e+]*\).*/\1/p" "$1" | head -1
}

# Median of the numbers on stdin ("-" when none).
median() {
    sort -g | awk '{ a[n++] = $1 } END {
        if (n == 0) { print "-"; exit }
        print (n % 2) ? a[int(n / 2)] : (a[n / 2 - 1] + a[n / 2]) / 2 }'
}

# metric NAME WHO KEY: the median of KEY over the rounds.
metric() {
    local f
    for f in "$WORK/$1-$2"-*.json; do
        [ -s "$f" ] && field "$f" "$3"
    done | median
}

# The points: NAME KIND PEER-WHO BENCH-ARGS [OUR-BACKEND-ARGS].
POINTS=()
if has rng; then
    POINTS+=("rng-4k-qd32|rng|peer|--bs 4k --iodepth 32")
    POINTS+=("rng-4k-qd32-pt|rng|peer|--bs 4k --iodepth 32|--passthrough")
    POINTS+=("rng-64-qd1|rng|peer|--bs 64 --iodepth 1")
fi
if has blk; then
    for rw in randread randwrite; do
        for qd in 1 32; do
            POINTS+=("blk-$rw-qd$qd|blk|peer|--rw $rw --bs 4k --iodepth $qd --queues $BLK_QUEUES")
        done
    done
fi
if has net; then
    POINTS+=("net-tx-64|net|peer-tx|--dir tx --pkt-size 64")
    POINTS+=("net-rx-64|net|peer-rx|--dir rx --pkt-size 64")
    # The DPDK backend busy-polls; ours polls too when told to.
    POINTS+=("net-tx-64-poll|net|peer-tx|--dir tx --pkt-size 64|--busy-poll-us $POLL_US")
    POINTS+=("net-rx-64-poll|net|peer-rx|--dir rx --pkt-size 64|--busy-poll-us $POLL_US")
fi

if has blk; then
    # An allocated image in tmpfs: reads hit pages, not holes.
    rm -f "$IMG"
    truncate -s "$BLK_SIZE" "$IMG"
    if [ "$BLK_MEDIA" = disk ]; then
        # Written, not only allocated: an unwritten extent reads as zeros without I/O.
        dd if=/dev/zero of="$IMG" bs=1M count="$(( $(stat -c %s "$IMG") >> 20 ))" \
            oflag=direct conv=notrunc status=none
    else
        fallocate -l "$BLK_SIZE" "$IMG" 2>/dev/null || true
    fi
fi

log "$(date -u +%FT%TZ): $REPEAT round(s) of ${#POINTS[@]} point(s), ${RUNTIME} s each"
for round in $(seq "$REPEAT"); do
    for p in "${POINTS[@]}"; do
        IFS='|' read -r name kind peer args OURS_ARGS <<<"$p"
        # shellcheck disable=SC2086 # args are words
        for who in ours "$peer"; do
            if [ "$kind" = blk ] && [ "$who" = ours ] && [ "$HAVE_BLK" = 0 ]; then
                continue
            fi
            point "$name" "$kind" "$who" "$round" $args
        done
        log "round $round $name done"
    done
done

# --- the table -----------------------------------------------------------------------
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'
}
fmt() {
    awk -v v="$1" -v s="${2:-1}" -v d="${3:-1}" 'BEGIN { if (v == "-") print "-"; else printf "%.*f", d, v / s }'
}
row() { # row NAME PEER LABEL KEY SCALE DECIMALS
    local o p
    o=$(metric "$1" ours "$4")
    p=$(metric "$1" "${2%%-*}" "$4")
    printf '| %s | %s | %s | %s |\n' "$3" "$(fmt "$o" "$5" "$6")" "$(fmt "$p" "$5" "$6")" "$(ratio "$o" "$p")"
}
features() { # features NAME WHO: negotiated virtio features of the first good run
    local f
    for f in "$WORK/$1-$2"-*.json; do
        [ -s "$f" ] && { sed -n 's/.*"features": "\([^"]*\)".*/\1/p' "$f" | head -1; return; }
    done
    echo "-"
}

vdr_version=$("$VDR" --version 2>/dev/null | awk '{ print $NF }' || echo "?")
qsd_version=$(qemu-storage-daemon --version 2>/dev/null | awk 'NR == 1 { print $3 }' || echo "?")
dpdk_version=$(dpkg-query -W -f '${Version}' dpdk-dev 2>/dev/null || echo "?")
cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
{
    cat <<EOF

## Our backends vs established vhost-user backends (ratio = ours / peer)

- Client: \`examples/bench\` (this repo), one connection, 1 queue (net: RX + TX pair),
  queue size $QSIZE, EVENT_IDX and INDIRECT_DESC negotiated when offered, kick after each
  batch, sleeps on the call eventfd when nothing is used; pinned to CPU $FE_CPU.
- Backends pinned to CPU $BE_CPU (whole process), a fresh process per run:
  rng: \`rng_backend\` (ChaCha20 generator keyed from /dev/urandom; \`--passthrough\`: every
  request read from /dev/urandom) vs vhost-device-rng $vdr_version (/dev/urandom, no rate limit);
  blk: \`blk_backend --queues $BLK_QUEUES ${BLK_PER_QUEUE[*]} --aio $BLK_AIO ${OURS_BLK[*]}\` vs qemu-storage-daemon $qsd_version (\`driver=file,$QSD_CACHE\`,
  \`num-queues=$BLK_QUEUES\`), both on the same $BLK_SIZE raw image ($BLK_MEDIA: $IMG);
  net: \`net_backend --backend null --frame-len 64\` vs dpdk-testpmd $dpdk_version net_vhost
  (rxonly for TX, txonly for RX; busy-polling, 2 lcores on CPU $BE_CPU, --no-huge).
- $(nproc) CPUs: $cpu_model. $REPEAT round(s) of $RUNTIME s per point, backends
  alternating; each cell is the median over the rounds. Latencies in µs (lower is better).

| point | ours | peer | ours/peer |
| --- | --- | --- | --- |
EOF
    if has rng; then
        row rng-4k-qd32 peer "rng 4 KiB QD32, MB/s" mb_per_s 1 1
        row rng-4k-qd32-pt peer "rng 4 KiB QD32, MB/s, ours --passthrough" mb_per_s 1 1
        row rng-64-qd1 peer "rng 64 B QD1, requests/s" req_per_s 1 0
        row rng-64-qd1 peer "rng 64 B QD1, p99 latency µs" p99 1 1
    fi
    if has blk; then
        for rw in randread randwrite; do
            for qd in 1 32; do
                row "blk-$rw-qd$qd" peer "blk 4 KiB $rw QD$qd, IOPS" iops 1 0
                row "blk-$rw-qd$qd" peer "blk 4 KiB $rw QD$qd, p99 latency µs" p99 1 1
            done
        done
        [ "$HAVE_BLK" = 1 ] || echo "| (blk_backend not built: examples/blk_backend.rs missing) | | | |"
    fi
    if has net; then
        row net-tx-64 peer-tx "net TX 64 B, Mpps" mpps 1 3
        row net-rx-64 peer-rx "net RX 64 B, Mpps" mpps 1 3
        row net-tx-64-poll peer-tx "net TX 64 B, Mpps, ours --busy-poll-us $POLL_US" mpps 1 3
        row net-rx-64-poll peer-rx "net RX 64 B, Mpps, ours --busy-poll-us $POLL_US" mpps 1 3
    fi
    echo
    echo "Negotiated features (ours / peer):"
    for p in "${POINTS[@]}"; do
        IFS='|' read -r name _ peer _ <<<"$p"
        echo "- $name: $(features "$name" ours) / $(features "$name" "${peer%%-*}")"
    done
    echo
    echo "Results (JSON per run) and logs: $WORK"
} | tee "$WORK/results"

if [ "$NET_DPDK" = 1 ]; then
    log "net_dpdk.sh: the same net rows with DPDK virtio-user as the client"
    NET_BACKEND=$TARGET/net_backend bash benches/net_dpdk.sh
fi
