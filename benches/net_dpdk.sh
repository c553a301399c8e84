#!/usr/bin/env bash
# Packet rate of `net_backend` next to DPDK's own vhost-user backend (the net_vhost PMD in
# dpdk-testpmd), both driven by the same client: dpdk-testpmd with the
# virtio-user PMD, with the same settings and pinned the same way (backend on CPU
# $BE_CPU, client on CPU $FE_CPU). One run measures, for split and packed rings
# (virtio-user packed_vq=0|1) and 64 B and 1500 B frames:
#
#   client txonly  frontend -> backend: the client's accepted TX rate (Tx-pps), which is
#                  the rate at which the backend takes frames off the TX ring;
#   client rxonly  backend -> frontend: the client's RX rate (Rx-pps), frames the backend
#                  generated (null backend) or sent (DPDK: testpmd txonly) into RX buffers.
#
# HOST=tap measures the path users run instead: `net_backend --tap`, next to DPDK's vhost
# PMD io-forwarding to its tap PMD (net_tap). txonly then counts the frames the kernel
# received on the tap (its rx_packets, once a second); rxonly feeds the tap from a host
# frame source (an AF_PACKET socket sending out of the tap, pinned with the client) and
# counts at the client. HOST=tap needs root.
#
# Both backends are measured at the same place, the client, from per-second samples
# after a warm-up. The two backends alternate (REPEAT rounds over every point), and
# before each run the round-trip time of one cache line between the two CPUs is taken:
# on a virtual machine it follows where the host runs the two vCPUs, and it moves the
# packet rates of both backends far more than anything else. Prints one table and the
# settings.
#
#   flock /tmp/cargo.lock bash benches/net_dpdk.sh
#
# (the lock keeps builds and tests of the same tree off the CPUs during the measurement;
# the script runs cargo itself, so it must not take the lock again). As root on Debian it
# installs what it needs (dpdk-dev and the PMD plug-ins).
#
# Environment (defaults in brackets):
#   DUR       measured seconds per run [5]        WARM    warm-up seconds per run [2]
#   REPEAT    rounds; each point runs once per round, fresh backend and client [3]
#   SIZES     frame sizes in bytes ["64 1500"]    QSIZE   ring size [256]
#   LAYOUTS   ring layouts ["split packed"]     HOST    null|tap [null]
#   TAP       tap device name for HOST=tap [vhubench0]
#   INORDER   virtio-user in_order=0|1 [1]        MRG     virtio-user mrg_rxbuf=0|1 [1]
#   MODES     client modes ["txonly rxonly"]
#   BE_CPU / FE_CPU  [0 / 1]
#   NET_BACKEND  a built net_backend [the example's release build, built here]
#   NET_ARGS  extra net_backend options, e.g. "--busy-poll-us 50" [none]
#   WORK      scratch directory (sockets, logs) [/tmp/net-dpdk-bench]
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${DUR:-5}
WARM=${WARM:-2}
REPEAT=${REPEAT:-3}
SIZES=${SIZES:-64 1500}
LAYOUTS=${LAYOUTS:-split packed}
HOST=${HOST:-null}
TAP=${TAP:-vhubench0}
QSIZE=${QSIZE:-256}
INORDER=${INORDER:-1}
MRG=${MRG:-1}
BE_CPU=${BE_CPU:-0}
FE_CPU=${FE_CPU:-1}
WORK=${WORK:-/tmp/net-dpdk-bench}
MBUFS=32768
MODES=${MODES:-txonly rxonly}
KINDS="ours dpdk"

# --- what it needs -------------------------------------------------------------------
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=()
    command -v dpdk-testpmd >/dev/null || need+=(dpdk-dev)
    for p in librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    command -v taskset >/dev/null || need+=(util-linux)
    if [ ${#need[@]} -gt 0 ]; then
        echo "net_dpdk: installing ${need[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        flock /tmp/apt.lock apt-get update -q
        flock /tmp/apt.lock apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
fi
for tool in dpdk-testpmd taskset stdbuf rustc cargo; do
    command -v "$tool" >/dev/null || { echo "net_dpdk: $tool missing" >&2; exit 1; }
done
if [ -z "${NET_BACKEND:-}" ]; then
    cargo build --quiet --release --example net_backend
    NET_BACKEND=$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/examples/net_backend
fi
[ -x "$NET_BACKEND" ] || { echo "net_dpdk: no net_backend at $NET_BACKEND" >&2; exit 1; }

mkdir -p "$WORK"
SOCK=$WORK/net.sock
# The client's virtio-user options for a ring layout.
vdev_opts() {
    local packed=0
    [ "$1" = packed ] && packed=1
    echo "queues=1,queue_size=$QSIZE,packed_vq=$packed,mrg_rxbuf=$MRG,in_order=$INORDER"
}
# virtio-user shares its memory by fd: no-huge memory in one memfd.
FE_EAL=(--lcores="0@$FE_CPU,1@$FE_CPU" --no-huge -m 512 --single-file-segments --no-pci
    --no-telemetry)
BE_EAL=(--lcores="0@$BE_CPU,1@$BE_CPU" --no-huge -m 512 --no-pci --no-telemetry)
APP=(--nb-cores=1 --rxd="$QSIZE" --txd="$QSIZE" --total-num-mbufs=$MBUFS)

BEPID=""
cleanup() {
    [ -n "$BEPID" ] && kill "$BEPID" 2>/dev/null
    [ -n "$SRCPID" ] && kill "$SRCPID" 2>/dev/null
    wait 2>/dev/null || true
    # EAL's runtime directories of this run's file prefixes.
    local run=/var/run
    [ "$(id -u)" = 0 ] || run=${XDG_RUNTIME_DIR:-/tmp}
    rm -rf "$run/dpdk/nbfe$$" "$run/dpdk/nbbe$$"
}
trap cleanup EXIT

# --- core-to-core probe: one cache line bounced between two pinned threads ------------
cat >"$WORK/pingpong.rs" <<'EOF'
use std::sync::atomic::{AtomicU64, Ordering::{Acquire, Release}};
use std::sync::Arc;
extern "C" {
    fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
}
fn pin(cpu: usize) {
    let mut mask = [0u64; 16];
    mask[cpu / 64] |= 1 << (cpu % 64);
    assert_eq!(unsafe { sched_setaffinity(0, 128, mask.as_ptr()) }, 0, "cpu {cpu}");
}
fn main() {
    let cpu: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    const N: u64 = 100_000;
    let line = Arc::new(AtomicU64::new(0));
    let other = line.clone();
    let peer = cpu[1];
    let t = std::thread::spawn(move || {
        pin(peer);
        for i in 0..N {
            while other.load(Acquire) != 2 * i + 1 {}
            other.store(2 * i + 2, Release);
        }
    });
    pin(cpu[0]);
    let start = std::time::Instant::now();
    for i in 0..N {
        line.store(2 * i + 1, Release);
        while line.load(Acquire) != 2 * i + 2 {}
    }
    t.join().unwrap();
    println!("{:.0}", start.elapsed().as_nanos() as f64 / N as f64);
}
EOF
rustc -O -o "$WORK/pingpong" "$WORK/pingpong.rs"

# --- host frame source (HOST=tap, rxonly): frames sent out of the tap ------------------
cat >"$WORK/framesrc.rs" <<'EOF'
// framesrc IFNAME LEN: sends LEN-byte Ethernet frames out of IFNAME as fast as it can
// (AF_PACKET, 64 frames per sendmmsg) until killed.
use std::ffi::CString;
#[repr(C)]
struct SockaddrLl { family: u16, protocol: u16, ifindex: i32, hatype: u16, pkttype: u8, halen: u8, addr: [u8; 8] }
#[repr(C)]
struct Iovec { base: *const u8, len: usize }
#[repr(C)]
struct Msghdr { name: *const u8, namelen: u32, iov: *const Iovec, iovlen: usize, control: *const u8, controllen: usize, flags: i32 }
#[repr(C)]
struct Mmsghdr { hdr: Msghdr, len: u32 }
extern "C" {
    fn socket(domain: i32, ty: i32, proto: i32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrLl, len: u32) -> i32;
    fn if_nametoindex(name: *const i8) -> u32;
    fn sendmmsg(fd: i32, msgs: *mut Mmsghdr, n: u32, flags: i32) -> i32;
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = CString::new(args[1].clone()).unwrap();
    let len: usize = args[2].parse().unwrap();
    // Broadcast destination, a local source address, IPv4 ethertype, zero payload.
    let mut frame = vec![0u8; len.max(60)];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    unsafe {
        let ifindex = if_nametoindex(name.as_ptr()) as i32;
        assert!(ifindex > 0, "no interface {}", args[1]);
        let fd = socket(17, 3, 0);
        assert!(fd >= 0, "AF_PACKET socket");
        let sa = SockaddrLl { family: 17, protocol: 0x0300, ifindex, hatype: 0, pkttype: 0, halen: 0, addr: [0; 8] };
        assert_eq!(bind(fd, &sa, std::mem::size_of::<SockaddrLl>() as u32), 0, "bind");
        let iov = Iovec { base: frame.as_ptr(), len: frame.len() };
        let mut msgs: Vec<Mmsghdr> = (0..64).map(|_| Mmsghdr { hdr: Msghdr { name: std::ptr::null(), namelen: 0, iov: &iov, iovlen: 1, control: std::ptr::null(), controllen: 0, flags: 0 }, len: 0 }).collect();
        loop {
            sendmmsg(fd, msgs.as_mut_ptr(), 64, 0);
        }
    }
}
EOF
if [ "$HOST" = tap ]; then
    [ "$(id -u)" = 0 ] || { echo "net_dpdk: HOST=tap needs root" >&2; exit 1; }
    command -v ip >/dev/null || { echo "net_dpdk: ip (iproute2) missing" >&2; exit 1; }
    rustc -O -o "$WORK/framesrc" "$WORK/framesrc.rs"
fi
SRCPID=""

# tap_counter NAME: a counter of the tap (rx_packets, tx_packets, tx_dropped, ...).
tap_counter() { cat "/sys/class/net/$TAP/statistics/$1" 2>/dev/null || echo 0; }

# CPU seconds (user + system) a process and every process under it have used so far:
# net_backend serves from a sandboxed child process, and its parent only supervises.
cpu_seconds() {
    local pids=($1) i=0 child
    while [ "$i" -lt "${#pids[@]}" ]; do
        for child in $(pgrep -P "${pids[$i]}"); do pids+=("$child"); done
        i=$((i + 1))
    done
    for i in "${pids[@]}"; do cat "/proc/$i/stat" 2>/dev/null; done |
        awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); s += $12 + $13 } END { print s / hz }'
}

# start_backend KIND MODE PKT LOG; MODE is the client's forwarding mode.
start_backend() {
    local kind=$1 mode=$2 pkt=$3 log=$4
    rm -f "$SOCK"
    if [ "$kind" = ours ] && [ "$HOST" = tap ]; then
        RUST_LOG=info taskset -c "$BE_CPU" "$NET_BACKEND" --backend tap --tap "$TAP" \
            --socket-path "$SOCK" ${NET_ARGS:-} >"$log" 2>&1 &
    elif [ "$kind" = ours ]; then
        RUST_LOG=info taskset -c "$BE_CPU" "$NET_BACKEND" --backend null \
            --socket-path "$SOCK" --frame-len "$pkt" ${NET_ARGS:-} >"$log" 2>&1 &
    elif [ "$HOST" = tap ]; then
        # DPDK's pair: frames forwarded as they are between the vhost port and its tap
        # port (io forwarding both ways).
        taskset -c "$BE_CPU" stdbuf -oL dpdk-testpmd "${BE_EAL[@]}" --file-prefix="nbbe$$" \
            --vdev "net_vhost0,iface=$SOCK,queues=1,client=0" --vdev "net_tap0,iface=$TAP" \
            -- "${APP[@]}" --forward-mode=io --stats-period=1 >"$log" 2>&1 &
    else
        # The DPDK backend does the opposite of the client: it receives what the client
        # sends and sends what the client receives. --stats-period keeps it running
        # without a terminal until SIGINT.
        local be_mode=rxonly
        [ "$mode" = rxonly ] && be_mode=txonly
        taskset -c "$BE_CPU" stdbuf -oL dpdk-testpmd "${BE_EAL[@]}" --file-prefix="nbbe$$" \
            --vdev "net_vhost0,iface=$SOCK,queues=1,client=0" -- "${APP[@]}" \
            --forward-mode=$be_mode --txpkts="$pkt" --stats-period=1 >"$log" 2>&1 &
    fi
    BEPID=$!
    for _ in $(seq 300); do
        if [ -S "$SOCK" ] && { [ "$HOST" = null ] || [ -e "/sys/class/net/$TAP" ]; }; then
            [ "$HOST" = tap ] && ip link set "$TAP" up
            return 0
        fi
        sleep 0.1
    done
    echo "net_dpdk: $kind backend did not listen; log:" >&2
    tail -20 "$log" >&2
    exit 1
}

stop_backend() {
    kill -INT "$BEPID" 2>/dev/null || true
    wait "$BEPID" 2>/dev/null || true
    BEPID=""
}

# The client's commands: start once it prompts, warm up, one `show port stats` a second
# (each prints the rates since the previous one), stop, quit. The backend's CPU use over
# the measured seconds (percent of one CPU) goes to file $4; with HOST=tap the tap's
# rx_packets, read at every sample, go to file $5.
client_commands() {
    local log=$1 dur=$2 warm=$3 cpufile=$4 tapfile=$5
    for _ in $(seq 600); do
        grep -q 'testpmd> ' "$log" 2>/dev/null && break
        sleep 0.1
    done
    echo start
    sleep "$warm"
    echo "show port stats 0"
    : >"$tapfile"
    [ "$HOST" = tap ] && tap_counter rx_packets >>"$tapfile"
    local c0 t0 c1 t1
    c0=$(cpu_seconds "$BEPID")
    t0=$(date +%s.%N)
    for _ in $(seq "$dur"); do
        sleep 1
        echo "show port stats 0"
        [ "$HOST" = tap ] && tap_counter rx_packets >>"$tapfile"
    done
    c1=$(cpu_seconds "$BEPID")
    t1=$(date +%s.%N)
    awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" \
        'BEGIN { printf "%.0f\n", 100 * (c1 - c0) / (t1 - t0) }' >"$cpufile"
    echo stop
    sleep 0.5
    echo quit
}

# run_once KIND LAYOUT MODE PKT: one backend + client run. Appends the client's per-second
# samples (pps) to $WORK/samples-TAG, its median to medians-TAG, the backend's CPU % to
# cpu-TAG and the core-to-core round trip before the run to rtt-TAG.
run_once() {
    local kind=$1 layout=$2 mode=$3 pkt=$4
    local tag=$kind-$layout-$mode-$pkt
    local belog=$WORK/be-$tag.log felog=$WORK/fe-$tag.log
    "$WORK/pingpong" "$BE_CPU" "$FE_CPU" >>"$WORK/rtt-$tag"
    : >"$felog"
    start_backend "$kind" "$mode" "$pkt" "$belog"
    local dropped0
    dropped0=$(tap_counter tx_dropped)
    if [ "$HOST" = tap ] && [ "$mode" = rxonly ]; then
        taskset -c "$FE_CPU" "$WORK/framesrc" "$TAP" "$pkt" &
        SRCPID=$!
    fi
    client_commands "$felog" "$DUR" "$WARM" "$WORK/cpu1-$tag" "$WORK/tap1-$tag" |
        taskset -c "$FE_CPU" timeout $((DUR + WARM + 90)) stdbuf -oL dpdk-testpmd \
            "${FE_EAL[@]}" --log-level=pmd.net.virtio.init:debug --file-prefix="nbfe$$" \
            --vdev "net_virtio_user0,path=$SOCK,$(vdev_opts "$layout")" -- -i "${APP[@]}" \
            --forward-mode="$mode" --txpkts="$pkt" >"$felog" 2>&1 || true
    if [ -n "$SRCPID" ]; then
        kill "$SRCPID" 2>/dev/null || true
        wait "$SRCPID" 2>/dev/null || true
        SRCPID=""
    fi
    # Frames the tap dropped because its reader (the backend) was behind.
    echo $(($(tap_counter tx_dropped) - dropped0)) >>"$WORK/dropped-$tag"
    stop_backend
    if [ "$HOST" = tap ] && [ "$mode" = txonly ]; then
        # Frames the kernel received on the tap, per second.
        awk 'NR > 1 { print $1 - prev } { prev = $1 }' "$WORK/tap1-$tag" >"$WORK/run-$tag"
    else
        local key=Rx-pps
        [ "$mode" = txonly ] && key=Tx-pps
        # Every "show port stats" but the first (it covers the warm-up) is one sample.
        awk -v k="$key:" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }' "$felog" |
            tail -n +2 >"$WORK/run-$tag"
    fi
    cat "$WORK/run-$tag" >>"$WORK/samples-$tag"
    median <"$WORK/run-$tag" >>"$WORK/medians-$tag"
    cat "$WORK/cpu1-$tag" >>"$WORK/cpu-$tag"
}

# Median, min and max of the numbers on stdin.
median() {
    sort -g | awk '{ a[n++] = $1 } END {
        if (n == 0) { print "0 0 0"; exit }
        m = (n % 2) ? a[int(n / 2)] : (a[n / 2 - 1] + a[n / 2]) / 2
        print m, a[0], a[n - 1] }'
}

rm -f "$WORK"/samples-* "$WORK"/medians-* "$WORK"/cpu-* "$WORK"/rtt-* "$WORK"/dropped-*
echo "net_dpdk: $(date -u +%FT%TZ): $REPEAT round(s), ${DUR} s per run after ${WARM} s," \
    "sizes $SIZES, layouts $LAYOUTS, host side $HOST" >&2
for round in $(seq "$REPEAT"); do
    for layout in $LAYOUTS; do
        for pkt in $SIZES; do
            for mode in $MODES; do
                for kind in $KINDS; do
                    run_once "$kind" "$layout" "$mode" "$pkt"
                    tag=$kind-$layout-$mode-$pkt
                    echo "net_dpdk: round $round $tag: run median $(tail -1 "$WORK/medians-$tag" |
                        awk '{ printf "%.2f", $1 / 1e6 }') Mpps, round trip" \
                        "$(tail -1 "$WORK/rtt-$tag") ns" >&2
                done
            done
        done
    done
done

# --- the table -----------------------------------------------------------------------
# negotiated KIND LAYOUT, client_path KIND LAYOUT: from the first size's txonly log.
negotiated() { grep -ao 'features after negotiate = [0-9a-f]*' "$WORK/fe-$1-$2-txonly-${SIZES%% *}.log" | tail -1 | awk '{ print "0x" $NF }'; }
client_path() { grep -ao 'using [A-Za-z ]* path' "$WORK/fe-$1-$2-txonly-${SIZES%% *}.log" | sed 's/using //; s/ path//' | sort -u | paste -sd, | sed 's/,/, /'; }
cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
dpdk_version=$(dpkg-query -W -f '${Version}' dpdk-dev 2>/dev/null || echo "?")
cat <<EOF

## net_backend ($HOST) vs DPDK vhost$([ "$HOST" = tap ] && echo " + tap PMD"), one DPDK virtio-user client

- Client: dpdk-testpmd ${dpdk_version}, virtio-user PMD \`$(vdev_opts split)\` (packed rows:
  \`packed_vq=1\`),
  EAL \`${FE_EAL[*]}\`, burst 32, $MBUFS mbufs; pinned to CPU $FE_CPU (both lcores).
$(if [ "$HOST" = tap ]; then
    echo "- Backends, pinned to CPU $BE_CPU: \`net_backend --backend tap --tap $TAP ${NET_ARGS:-}\` (release"
    echo "  build; all its threads) and \`dpdk-testpmd --vdev net_vhost0,iface=... --vdev net_tap0,iface=$TAP"
    echo "  --forward-mode=io\` (${BE_EAL[*]}). txonly: frames the kernel received on the tap"
    echo "  (rx_packets per second); rxonly: the client's Rx-pps, fed by \`framesrc\` (AF_PACKET,"
    echo "  64 frames per sendmmsg, broadcast frames out of the tap) on CPU $FE_CPU with the client."
    echo "  dropped: frames the tap dropped for its reader per run (median)."
else
    echo "- Backends, pinned to CPU $BE_CPU: \`net_backend --backend null --frame-len N ${NET_ARGS:-}\` (release"
    echo "  build; all its threads) and \`dpdk-testpmd --vdev net_vhost0,iface=...\` (${BE_EAL[*]})."
fi)
$(for layout in $LAYOUTS; do
    echo "- $layout: negotiated virtio features net_backend $(negotiated ours "$layout"), DPDK vhost"
    echo "  $(negotiated dpdk "$layout"); client data path with net_backend \"$(client_path ours "$layout")\","
    echo "  with DPDK vhost \"$(client_path dpdk "$layout")\"."
done)
- $(nproc) CPUs: $cpu_model. $REPEAT round(s); per point and round one run per backend
  (alternating), $DUR one-second samples after ${WARM} s of warm-up.
- Mpps: median of all samples (min-max of the samples); ratio: median over the rounds of
  net_backend / DPDK from the same round (run medians); best: ratio of the best seconds.
  CPU: net_backend's CPU use while measured (DPDK vhost busy-polls: 100 %). Round trip:
  one cache line CPU $BE_CPU -> $FE_CPU -> $BE_CPU before each run, min-max (net_backend runs /
  DPDK runs).

| layout | client mode | frame B | net_backend Mpps | DPDK vhost Mpps | ratio | best | net_backend Gbit/s | CPU | round trip ns | dropped ours / DPDK |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
EOF
for layout in $LAYOUTS; do
    for pkt in $SIZES; do
        for mode in $MODES; do
            t=$layout-$mode-$pkt
            read -r om omin omax < <(median <"$WORK/samples-ours-$t")
            read -r dm dmin dmax < <(median <"$WORK/samples-dpdk-$t")
            ratio=$(paste <(awk '{ print $1 }' "$WORK/medians-ours-$t") \
                <(awk '{ print $1 }' "$WORK/medians-dpdk-$t") |
                awk '$2 > 0 { print $1 / $2 }' | median | awk '{ printf "%.2f", $1 }')
            cpu=$(median <"$WORK/cpu-ours-$t" | awk '{ printf "%.0f", $1 }')
            ortt=$(median <"$WORK/rtt-ours-$t" | awk '{ print $2 "-" $3 }')
            drtt=$(median <"$WORK/rtt-dpdk-$t" | awk '{ print $2 "-" $3 }')
            dir="$mode (frontend -> backend)"
            [ "$mode" = rxonly ] && dir="$mode (backend -> frontend)"
            drop=-
            if [ "$HOST" = tap ]; then
                drop="$(median <"$WORK/dropped-ours-$t" | awk '{ print $1 }') / $(median <"$WORK/dropped-dpdk-$t" | awk '{ print $1 }')"
            fi
            awk -v drop="$drop" -v layout="$layout" -v dir="$dir" -v pkt="$pkt" -v om="$om" -v omin="$omin" \
                -v omax="$omax" -v dm="$dm" -v dmin="$dmin" -v dmax="$dmax" -v ratio="$ratio" \
                -v cpu="$cpu" -v ortt="$ortt" -v drtt="$drtt" 'BEGIN {
                    best = (dmax > 0) ? sprintf("%.2f", omax / dmax) : "-"
                    printf "| %s | %s | %d | %.2f (%.2f-%.2f) | %.2f (%.2f-%.2f) | %s | %s | %.2f | %s %% | %s / %s | %s |\n",
                        layout, dir, pkt, om / 1e6, omin / 1e6, omax / 1e6, dm / 1e6,
                        dmin / 1e6, dmax / 1e6, ratio, best, om * pkt * 8 / 1e9, cpu, ortt, drtt, drop }'
        done
    done
done
echo
echo "Logs: $WORK"
