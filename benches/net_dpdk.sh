#!/usr/bin/env bash
# Packet rate of `net_backend --backend null` next to DPDK's own vhost-user backend (the
# net_vhost PMD in dpdk-testpmd), both driven by the same client: dpdk-testpmd with the
# virtio-user PMD, with the same settings and pinned the same way (backend on CPU
# $BE_CPU, client on CPU $FE_CPU). One run measures, for 64 B and 1500 B frames:
#
#   client txonly  frontend -> backend: the client's accepted TX rate (Tx-pps), which is
#                  the rate at which the backend takes frames off the TX ring;
#   client rxonly  backend -> frontend: the client's RX rate (Rx-pps), frames the backend
#                  generated (null backend) or sent (DPDK: testpmd txonly) into RX buffers.
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
#   INORDER   virtio-user in_order=0|1 [1]        MRG     virtio-user mrg_rxbuf=0|1 [1]
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
QSIZE=${QSIZE:-256}
INORDER=${INORDER:-1}
MRG=${MRG:-1}
BE_CPU=${BE_CPU:-0}
FE_CPU=${FE_CPU:-1}
WORK=${WORK:-/tmp/net-dpdk-bench}
MBUFS=32768
MODES="txonly rxonly"
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
VDEV_OPTS="queues=1,queue_size=$QSIZE,packed_vq=0,mrg_rxbuf=$MRG,in_order=$INORDER"
# virtio-user shares its memory by fd: no-huge memory in one memfd.
FE_EAL=(--lcores="0@$FE_CPU,1@$FE_CPU" --no-huge -m 512 --single-file-segments --no-pci
    --no-telemetry)
BE_EAL=(--lcores="0@$BE_CPU,1@$BE_CPU" --no-huge -m 512 --no-pci --no-telemetry)
APP=(--nb-cores=1 --rxd="$QSIZE" --txd="$QSIZE" --total-num-mbufs=$MBUFS)

BEPID=""
cleanup() {
    [ -n "$BEPID" ] && kill "$BEPID" 2>/dev/null
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

# CPU seconds (user + system) a process has used so far.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}

# start_backend KIND MODE PKT LOG; MODE is the client's forwarding mode.
start_backend() {
    local kind=$1 mode=$2 pkt=$3 log=$4
    rm -f "$SOCK"
    if [ "$kind" = ours ]; then
        RUST_LOG=info taskset -c "$BE_CPU" "$NET_BACKEND" --backend null \
            --socket-path "$SOCK" --frame-len "$pkt" ${NET_ARGS:-} >"$log" 2>&1 &
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
        [ -S "$SOCK" ] && return 0
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
# the measured seconds (percent of one CPU) goes to file $4.
client_commands() {
    local log=$1 dur=$2 warm=$3 cpufile=$4
    for _ in $(seq 600); do
        grep -q 'testpmd> ' "$log" 2>/dev/null && break
        sleep 0.1
    done
    echo start
    sleep "$warm"
    echo "show port stats 0"
    local c0 t0 c1 t1
    c0=$(cpu_seconds "$BEPID")
    t0=$(date +%s.%N)
    for _ in $(seq "$dur"); do
        sleep 1
        echo "show port stats 0"
    done
    c1=$(cpu_seconds "$BEPID")
    t1=$(date +%s.%N)
    awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" \
        'BEGIN { printf "%.0f\n", 100 * (c1 - c0) / (t1 - t0) }' >"$cpufile"
    echo stop
    sleep 0.5
    echo quit
}

# run_once KIND MODE PKT: one backend + client run. Appends the client's per-second
# samples (pps) to $WORK/samples-TAG, its median to medians-TAG, the backend's CPU % to
# cpu-TAG and the core-to-core round trip before the run to rtt-TAG.
run_once() {
    local kind=$1 mode=$2 pkt=$3
    local tag=$kind-$mode-$pkt
    local belog=$WORK/be-$tag.log felog=$WORK/fe-$tag.log
    "$WORK/pingpong" "$BE_CPU" "$FE_CPU" >>"$WORK/rtt-$tag"
    : >"$felog"
    start_backend "$kind" "$mode" "$pkt" "$belog"
    client_commands "$felog" "$DUR" "$WARM" "$WORK/cpu1-$tag" |
        taskset -c "$FE_CPU" timeout $((DUR + WARM + 90)) stdbuf -oL dpdk-testpmd \
            "${FE_EAL[@]}" --log-level=pmd.net.virtio.init:debug --file-prefix="nbfe$$" \
            --vdev "net_virtio_user0,path=$SOCK,$VDEV_OPTS" -- -i "${APP[@]}" \
            --forward-mode="$mode" --txpkts="$pkt" >"$felog" 2>&1 || true
    stop_backend
    local key=Rx-pps
    [ "$mode" = txonly ] && key=Tx-pps
    # Every "show port stats" but the first (it covers the warm-up) is one sample.
    awk -v k="$key:" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }' "$felog" |
        tail -n +2 >"$WORK/run-$tag"
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

rm -f "$WORK"/samples-* "$WORK"/medians-* "$WORK"/cpu-* "$WORK"/rtt-*
echo "net_dpdk: $(date -u +%FT%TZ): $REPEAT round(s), ${DUR} s per run after ${WARM} s," \
    "sizes $SIZES" >&2
for round in $(seq "$REPEAT"); do
    for pkt in $SIZES; do
        for mode in $MODES; do
            for kind in $KINDS; do
                run_once "$kind" "$mode" "$pkt"
                tag=$kind-$mode-$pkt
                echo "net_dpdk: round $round $tag: run median $(tail -1 "$WORK/medians-$tag" |
                    awk '{ printf "%.2f", $1 / 1e6 }') Mpps, round trip" \
                    "$(tail -1 "$WORK/rtt-$tag") ns" >&2
            done
        done
    done
done

# --- the table -----------------------------------------------------------------------
negotiated() { grep -ao 'features after negotiate = [0-9a-f]*' "$WORK/fe-$1-txonly-${SIZES%% *}.log" | tail -1 | awk '{ print "0x" $NF }'; }
client_path() { grep -ao 'using [A-Za-z ]* path' "$WORK/fe-$1-txonly-${SIZES%% *}.log" | sed 's/using //; s/ path//' | sort -u | paste -sd, | sed 's/,/, /'; }
cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
dpdk_version=$(dpkg-query -W -f '${Version}' dpdk-dev 2>/dev/null || echo "?")
cat <<EOF

## net_backend (null) vs DPDK vhost, one DPDK virtio-user client

- Client: dpdk-testpmd ${dpdk_version}, virtio-user PMD \`$VDEV_OPTS\`,
  EAL \`${FE_EAL[*]}\`, burst 32, $MBUFS mbufs; pinned to CPU $FE_CPU (both lcores).
- Backends, pinned to CPU $BE_CPU: \`net_backend --backend null --frame-len N ${NET_ARGS:-}\` (release
  build; all its threads) and \`dpdk-testpmd --vdev net_vhost0,iface=...\` (${BE_EAL[*]}).
- Negotiated virtio features: net_backend $(negotiated ours), DPDK vhost $(negotiated dpdk).
  Client data path: with net_backend "$(client_path ours)"; with DPDK vhost "$(client_path dpdk)".
- $(nproc) CPUs: $cpu_model. $REPEAT round(s); per point and round one run per backend
  (alternating), $DUR one-second samples after ${WARM} s of warm-up.
- Mpps: median of all samples (min-max of the samples); ratio: median over the rounds of
  net_backend / DPDK from the same round (run medians); best: ratio of the best seconds.
  CPU: net_backend's CPU use while measured (DPDK vhost busy-polls: 100 %). Round trip:
  one cache line CPU $BE_CPU -> $FE_CPU -> $BE_CPU before each run, min-max (net_backend runs /
  DPDK runs).

| client mode | frame B | net_backend Mpps | DPDK vhost Mpps | ratio | best | net_backend Gbit/s | CPU | round trip ns |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
EOF
for pkt in $SIZES; do
    for mode in $MODES; do
        read -r om omin omax < <(median <"$WORK/samples-ours-$mode-$pkt")
        read -r dm dmin dmax < <(median <"$WORK/samples-dpdk-$mode-$pkt")
        ratio=$(paste <(awk '{ print $1 }' "$WORK/medians-ours-$mode-$pkt") \
            <(awk '{ print $1 }' "$WORK/medians-dpdk-$mode-$pkt") |
            awk '$2 > 0 { print $1 / $2 }' | median | awk '{ printf "%.2f", $1 }')
        cpu=$(median <"$WORK/cpu-ours-$mode-$pkt" | awk '{ printf "%.0f", $1 }')
        ortt=$(median <"$WORK/rtt-ours-$mode-$pkt" | awk '{ print $2 "-" $3 }')
        drtt=$(median <"$WORK/rtt-dpdk-$mode-$pkt" | awk '{ print $2 "-" $3 }')
        dir="$mode (frontend -> backend)"
        [ "$mode" = rxonly ] && dir="$mode (backend -> frontend)"
        awk -v dir="$dir" -v pkt="$pkt" -v om="$om" -v omin="$omin" -v omax="$omax" \
            -v dm="$dm" -v dmin="$dmin" -v dmax="$dmax" -v ratio="$ratio" -v cpu="$cpu" \
            -v ortt="$ortt" -v drtt="$drtt" 'BEGIN {
                best = (dmax > 0) ? sprintf("%.2f", omax / dmax) : "-"
                printf "| %s | %d | %.2f (%.2f-%.2f) | %.2f (%.2f-%.2f) | %s | %s | %.2f | %s %% | %s / %s |\n",
                    dir, pkt, om / 1e6, omin / 1e6, omax / 1e6, dm / 1e6, dmin / 1e6,
                    dmax / 1e6, ratio, best, om * pkt * 8 / 1e9, cpu, ortt, drtt }'
    done
done
echo
echo "Logs: $WORK"
