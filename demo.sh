#!/usr/bin/env bash
# demo.sh: one command brings up a live anycast + ECMP lab with lb-agent, in
# network namespaces, and narrates it step by step with real output.
#
#   ./demo.sh              install what is missing, build, start the lab, narrate,
#                          and leave the lab running to look around
#   ./demo.sh --no-keep    the same, then tear everything down (for automated
#                          checks; also when CI is set in the environment)
#   ./demo.sh --source etcd  the same lab with etcd as the source of both LBs:
#                          an etcd member in the api namespace, every change
#                          published with `lb-agent publish --to etcd://...`
#   ./demo.sh teardown     stop and remove everything a previous run left
#   ./demo.sh --help       all options
#
# Topology (every address lives only inside the namespaces this script creates;
# the root namespace's addresses and routes are never touched):
#
#   client 10.0.9.2 ── lbdemo-tor (BIRD AS65000, merge paths on, ip_forward=1)
#                       ├── lb1 10.0.1.2 AS65001: HAProxy + BIRD + lb-agent (file:// source)
#                       ├── lb2 10.0.2.2 AS65002: HAProxy + BIRD + lb-agent (HTTP API, long-poll)
#                       ├── be1 10.0.11.2:8080, be2 10.0.12.2:8080 (answer with their name)
#                       └── api 10.0.13.2:8000 (the desired-state document of group "blue")
#                           (--source etcd: an etcd member on 10.0.13.2:2379 instead, and
#                            both lb1 and lb2 watch etcd://10.0.13.2:2379/lb/blue)
#   VIP 192.0.2.10/32 on each LB's lo (added by lb-agent), announced by BGP while healthy.
#
# Configuration files and documents: fixtures/demo/. Runtime files, sockets and
# logs: /run/lb-agent-demo (LB_DEMO_DIR overrides).
set -euo pipefail
umask 022
unset JOURNAL_STREAM # the agents log to files in the lab, never to the journal
export RUST_LOG=${LB_DEMO_RUST_LOG:-info}
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FIX=$REPO/fixtures/demo
LAB=${LB_DEMO_DIR:-/run/lb-agent-demo}
MARKER=.lb-agent-demo-lab
P=lbdemo
NS_TOR=$P-tor NS_LB1=$P-lb1 NS_LB2=$P-lb2 NS_BE1=$P-be1 NS_BE2=$P-be2 NS_API=$P-api NS_CL=$P-client
ALL_NS=("$NS_CL" "$NS_LB1" "$NS_LB2" "$NS_BE1" "$NS_BE2" "$NS_API" "$NS_TOR")
VIP=192.0.2.10
API_URL=http://10.0.13.2:8000/v1/groups/blue/config
ETCD_URL=etcd://10.0.13.2:2379/lb/blue
HAPROXY_BIN=/usr/sbin/haproxy
# The distro's interpreter, not a wrapper (a pyenv shim is a bash script, so the
# PID we record would not be python's for seconds).
PY=/usr/bin/python3

# --- options ---------------------------------------------------------------
ACTION=up
KEEP=1
PROFILE=debug
BIN=""
INSTALL=1
SOURCE=default # default (lb1 file://, lb2 HTTP long-poll) | etcd (both LBs)
case "${CI:-}" in "" | 0 | false | no) ;; *) KEEP=0 ;; esac

usage() {
    cat <<EOF
Usage: ./demo.sh [up] [options]     bring up the lab and narrate it (default)
       ./demo.sh teardown           remove everything a previous run left
       ./demo.sh --help

Options:
  --no-keep     tear the lab down after the narration (automated checks;
                the default when CI is set in the environment)
  --keep        keep the lab running after the narration even when CI is set
  --debug       build with \`cargo build\` (the default: on 2 cores a cold
                debug build takes about 40% of the CPU time of a release
                build, and the lab does not need optimised code)
  --release     build with \`cargo build --release\` instead
  --bin PATH    use this lb-agent binary; do not build
  --no-install  do not apt-get install missing packages (fail instead)
  --source etcd run an etcd member in the api namespace; both LBs use
                source.url = "$ETCD_URL" and every change is one
                \`lb-agent publish --to $ETCD_URL\` (docs/etcd.md)
  --source default  lb1 reads file://, lb2 the HTTP long-poll API (the default)

Needs root, Debian 12 (apt), and cargo >= 1.85 (rustup) unless --bin is given.
Lab files, sockets and logs: $LAB (set LB_DEMO_DIR to move it).
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
    up | run) ACTION=up ;;
    teardown | down | clean) ACTION=teardown ;;
    --no-keep | --ci) KEEP=0 ;;
    --keep) KEEP=1 ;;
    --release) PROFILE=release ;;
    --debug) PROFILE=debug ;;
    --bin)
        [ $# -ge 2 ] || { echo "--bin needs a path" >&2; exit 2; }
        BIN=$2
        shift
        ;;
    --no-install) INSTALL=0 ;;
    --source)
        [ $# -ge 2 ] || { echo "--source needs etcd or default" >&2; exit 2; }
        case "$2" in etcd | default) SOURCE=$2 ;; *) echo "--source $2: etcd or default" >&2; exit 2 ;; esac
        shift
        ;;
    -h | --help | help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see ./demo.sh --help)" >&2; exit 2 ;;
    esac
    shift
done

# --- output ----------------------------------------------------------------
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    B=$'\e[1m' D=$'\e[2m' R=$'\e[31m' G=$'\e[32m' Y=$'\e[33m' N=$'\e[0m'
else
    B="" D="" R="" G="" Y="" N=""
fi
ms() { date +%s%3N; }
T_START=$(ms)
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }

banner() { # banner TITLE
    printf '\n%s%s%s\n' "$B" "========================================================================" "$N"
    printf '%s %s%s\n' "$B" "$1" "$N"
    printf '%s%s%s\n' "$B" "========================================================================" "$N"
}
phase() { printf '\n%s== %s%s\n' "$B" "$*" "$N"; }
say() { printf '%s\n' "$*"; }
ok() { printf '%s  ok%s %s\n' "$G" "$N" "$*"; }
note() { printf '%s  note%s %s\n' "$Y" "$N" "$*"; }
# show CMD...: prints "$ CMD" and runs it, its output indented (real output).
show() {
    printf '%s$ %s%s\n' "$B" "$*" "$N"
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/    /'
    [ "$rc" -eq 0 ] || printf '%s    (exit code %s)%s\n' "$Y" "$rc" "$N"
    return 0
}
# shown PRETTY CMD...: like show, but prints PRETTY instead of the command.
shown() {
    local pretty=$1
    shift
    printf '%s$ %s%s\n' "$B" "$pretty" "$N"
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/    /'
    [ "$rc" -eq 0 ] || printf '%s    (exit code %s)%s\n' "$Y" "$rc" "$N"
    return 0
}

# --- failure handling --------------------------------------------------------
STATE=starting # starting | running | finished | failed | interrupted
FAIL_LOGS=()
tails() { # tails FILE...: the last lines of each existing log
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        printf '%s---- last lines of %s ----%s\n' "$D" "$f" "$N" >&2
        tail -n 25 "$f" | sed 's/^/    /' >&2
    done
}
die() { # die MESSAGE [LOG...]
    local msg=$1
    shift
    printf '\n%sFAILED: %s%s\n' "$R$B" "$msg" "$N" >&2
    tails "$@"
    STATE=failed
    exit 1
}
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$STATE" = finished ] || [ "$ACTION" = teardown ]; then
        exit "$rc"
    fi
    if [ "$STATE" = interrupted ] || [ "$KEEP" = 0 ]; then
        say ""
        say "tearing the lab down ($STATE)"
        teardown || true
    elif [ -d "$LAB" ]; then
        printf '\n%sThe lab is left as it is for inspection (logs under %s).%s\n' "$Y" "$LAB" "$N" >&2
        printf '%sRemove it with: %s/demo.sh teardown%s\n' "$Y" "$REPO" "$N" >&2
    fi
    exit "$rc"
}
on_signal() {
    printf '\n%sinterrupted%s\n' "$R" "$N" >&2
    STATE=interrupted
    exit 130
}

# wait_until DESC SECONDS CMD...: polls CMD every 0.2 s, bounded in count and in
# time; fails loudly with the logs in FAIL_LOGS when it does not converge.
# Each probe is bounded too: programs run under `timeout 5`, and the shell
# functions used as probes bound every command they run.
wait_until() {
    local desc=$1 limit=$2
    shift 2
    local t0 max i=0 probe=(timeout 5)
    t0=$(ms)
    max=$((limit * 5 + 1))
    declare -F "$1" >/dev/null && probe=()
    while [ "$i" -lt "$max" ]; do
        if "${probe[@]}" "$@" >/dev/null 2>&1; then
            return 0
        fi
        if [ $(($(ms) - t0)) -gt $((limit * 1000)) ]; then
            break
        fi
        sleep 0.2
        i=$((i + 1))
    done
    die "$desc: not reached within ${limit} s" "${FAIL_LOGS[@]}"
}

# --- processes: spawned inside a namespace, recorded by PID and comm ---------
PIDS_FILE=$LAB/pids
# spawn NAME NS LOG CMD...: runs CMD in NS, detached from the terminal
# (setsid), and records "NAME PID COMM". `ip netns exec` and `setsid` exec,
# so $! is the program itself; checked through /proc/PID/comm (notes gotcha 16).
spawn() {
    local name=$1 ns=$2 log=$3
    shift 3
    local comm pid i
    comm=$(basename "$1")
    comm=${comm:0:15}
    ip netns exec "$ns" setsid "$@" >"$log" 2>&1 </dev/null &
    pid=$!
    for i in $(seq 1 50); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            die "$name exited at once" "$log"
        fi
        sleep 0.05
    done
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] ||
        die "$name: PID $pid is not $comm after 2.5 s (comm: $(cat "/proc/$pid/comm" 2>/dev/null || echo gone))" "$log"
    echo "$name $pid $comm" >>"$PIDS_FILE"
    eval "PID_${name//-/_}=$pid"
}
# alive_as PID COMM: true when PID runs and is still that program.
alive_as() { [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]; }

# --- teardown ----------------------------------------------------------------
ns_exists() { [ -e "/run/netns/$1" ]; }
lab_dir_ok() {
    case "$LAB" in /?*) ;; *) return 1 ;; esac
    [ "$LAB" != / ] && [ -f "$LAB/$MARKER" ]
}
# stop_pids SIG_WAIT_SECONDS NAME-FILTER: SIGCONT+SIGTERM to recorded processes
# whose name matches, wait (bounded), then SIGKILL; every kill checks comm.
stop_recorded() {
    local filter=$1 grace=$2
    [ -f "$PIDS_FILE" ] || return 0
    local name pid comm targets=() i
    while read -r name pid comm; do
        # shellcheck disable=SC2254 # the filter is a glob on purpose
        case "$name" in $filter) ;; *) continue ;; esac
        if alive_as "$pid" "$comm"; then
            kill -CONT "$pid" 2>/dev/null || true
            kill -TERM "$pid" 2>/dev/null || true
            targets+=("$pid:$comm:$name")
        fi
    done <"$PIDS_FILE"
    [ "${#targets[@]}" -gt 0 ] || return 0
    for i in $(seq 1 $((grace * 10))); do
        local left=0 t
        for t in "${targets[@]}"; do
            alive_as "${t%%:*}" "$(echo "$t" | cut -d: -f2)" && left=1
        done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    local t
    for t in "${targets[@]}"; do
        pid=${t%%:*}
        comm=$(echo "$t" | cut -d: -f2)
        name=${t##*:}
        if alive_as "$pid" "$comm"; then
            say "  $name (PID $pid) did not stop within ${grace} s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}
# sweep NS: whatever still runs inside a namespace this script created.
sweep() {
    local ns=$1 pids pid i
    ns_exists "$ns" || return 0
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$pids" ] || return 0
    for pid in $pids; do
        say "  left in $ns: PID $pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo '?')): stopping it"
        kill -CONT "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
    done
    for i in $(seq 1 30); do
        [ -z "$(ip netns pids "$ns" 2>/dev/null || true)" ] && return 0
        sleep 0.1
    done
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
        kill -KILL "$pid" 2>/dev/null || true
    done
}
teardown() {
    local found=0 ns pid
    for ns in "${ALL_NS[@]}"; do ns_exists "$ns" && found=1; done
    [ -e "$LAB" ] && found=1
    if [ "$found" = 0 ]; then
        say "  nothing to tear down (no $P-* namespaces, no $LAB)"
        return 0
    fi
    if [ -e "$LAB" ] && ! lab_dir_ok; then
        die "$LAB exists but is not a demo lab directory (no $MARKER); not touching it"
    fi
    # Anything left frozen (step 4 interrupted) must run again to be able to stop.
    for ns in "${ALL_NS[@]}"; do
        ns_exists "$ns" || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -CONT "$pid" 2>/dev/null || true; done
    done
    # Agents first: with on_stop = "withdraw" each withdraws its VIP while BIRD still runs.
    stop_recorded 'agent-*' 10
    stop_recorded '*' 5
    for ns in "${ALL_NS[@]}"; do sweep "$ns"; done
    for ns in "${ALL_NS[@]}"; do
        if ns_exists "$ns"; then
            ip netns del "$ns" 2>/dev/null || say "  could not delete namespace $ns"
        fi
    done
    if lab_dir_ok; then rm -rf -- "$LAB"; fi
    local left=()
    for ns in "${ALL_NS[@]}"; do ns_exists "$ns" && left+=("$ns"); done
    [ -e "$LAB" ] && left+=("$LAB")
    if [ "${#left[@]}" -gt 0 ]; then
        die "teardown left: ${left[*]}"
    fi
    say "  removed namespaces ${ALL_NS[*]} and $LAB"
}

if [ "$ACTION" = teardown ]; then
    [ "$(id -u)" -eq 0 ] || { echo "demo.sh teardown needs root" >&2; exit 1; }
    banner "Tearing down the lb-agent demo lab"
    teardown
    exit 0
fi

trap on_exit EXIT
trap on_signal INT TERM HUP

# --- 0. prerequisites ----------------------------------------------------------
banner "lb-agent demo: a live anycast + ECMP lab in network namespaces"
[ "$(id -u)" -eq 0 ] || die "run me as root (network namespaces, BIRD, HAProxy)"

phase "Packages"
need=()
add_need() { case " ${need[*]} " in *" $1 "*) ;; *) need+=("$1") ;; esac; }
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
[ -x "$PY" ] || add_need python3
for pair in haproxy:haproxy bird:bird2 birdc:bird2 ip:iproute2 socat:socat curl:curl \
    setsid:util-linux; do
    have "${pair%%:*}" || add_need "${pair##*:}"
done
if [ "$SOURCE" = etcd ]; then have etcd || add_need etcd-server; fi
if [ -z "$BIN" ]; then
    # The agent's TLS crate (ring) compiles C, and rustc links with cc.
    have cc || add_need gcc
    # etcd-client compiles etcd's .proto files with protoc at build time.
    have protoc || add_need protobuf-compiler
    # ... which import protobuf's well-known types (libprotobuf-dev).
    [ -e /usr/include/google/protobuf/descriptor.proto ] || add_need libprotobuf-dev
    [ -e /usr/include/stdio.h ] || add_need libc6-dev
fi
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$INSTALL" = 1 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing: ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
            die "apt-get install ${need[*]} failed"
    else
        die "missing packages: ${need[*]} (apt-get install -y ${need[*]})"
    fi
else
    say "haproxy, bird2, iproute2, socat, curl, python3: already installed"
fi
say "$("$HAPROXY_BIN" -v | sed -n 1p)"
say "$(bird --version 2>&1 | sed -n 1p)"
# A distro-started HAProxy or BIRD is not part of the lab (which runs its own
# inside namespaces); stop them as test.sh does so nothing competes.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for unit in haproxy.service bird.service; do
        if systemctl is-active --quiet "$unit"; then
            systemctl stop "$unit" && say "stopped the distro's $unit (the lab runs its own HAProxy and BIRD)"
        fi
    done
fi
ip netns add "$P-probe" 2>/dev/null && ip netns del "$P-probe" ||
    die "\`ip netns add\` does not work here (needs root and network namespace support)"

# --- 1. build --------------------------------------------------------------------
phase "Building lb-agent"
T_BUILD0=$(ms)
if [ -n "$BIN" ]; then
    BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
    [ -x "$BIN" ] || die "--bin $BIN: not an executable"
    say "using $BIN (--bin; no build)"
else
    command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] ||
        die "cargo not found. Install Rust >= 1.85 with rustup (https://rustup.rs; Debian 12's own cargo is too old), or pass --bin PATH"
    command -v cargo >/dev/null 2>&1 || export PATH=$HOME/.cargo/bin:$PATH
    rv=$(cargo --version | awk '{print $2}')
    case "$(printf '%s\n1.85.0\n' "$rv" | sort -V | head -1)" in
    1.85.0) ;;
    *) die "cargo $rv is too old: lb-agent needs >= 1.85 (rustup update)" ;;
    esac
    cd "$REPO"
    flag=()
    [ "$PROFILE" = release ] && flag=(--release)
    say "cargo build ${flag[*]} --locked   (cargo $rv; profile: $PROFILE)"
    blog=$(mktemp /tmp/lb-agent-demo-build.XXXXXX)
    if ! cargo build "${flag[@]}" --locked >"$blog" 2>&1; then
        tail -n 40 "$blog" >&2
        rm -f "$blog"
        die "cargo build failed (output above)"
    fi
    grep -E '^ *Finished' "$blog" || true
    rm -f "$blog"
    target=${CARGO_TARGET_DIR:-$REPO/target}
    case "$target" in /*) ;; *) target=$REPO/$target ;; esac
    BIN=$target/$PROFILE/lb-agent
    [ -x "$BIN" ] || die "cargo build did not produce $BIN"
fi
T_BUILD1=$(ms)
say "lb-agent: $("$BIN" --version)  ($BIN)"
say "build step took $(secs "$T_BUILD0" "$T_BUILD1") s"
# How the narration shows the binary: relative to the repo when it is inside it.
case "$BIN" in "$REPO"/*) A=./${BIN#"$REPO"/} ;; *) A=$BIN ;; esac
cd "$REPO"

# --- 2. lab ------------------------------------------------------------------------
T_LAB0=$(ms)
phase "Cleaning leftovers of a previous run"
teardown

phase "Network namespaces and links"
mkdir -p "$LAB"
chmod 755 "$LAB"
touch "$LAB/$MARKER"
: >"$PIDS_FILE"
for ns in "${ALL_NS[@]}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
# veth pairs are created directly between two lab namespaces (never in the root one).
link() { # link TOR_IF TOR_ADDR NS NS_ADDR
    ip -n "$NS_TOR" link add "$1" type veth peer name eth0 netns "$3"
    ip -n "$NS_TOR" addr add "$2/24" dev "$1"
    ip -n "$NS_TOR" link set "$1" up
    ip -n "$3" addr add "$4/24" dev eth0
    ip -n "$3" link set eth0 up
    ip -n "$3" route add default via "$2"
}
link tor-lb1 10.0.1.1 "$NS_LB1" 10.0.1.2
link tor-lb2 10.0.2.1 "$NS_LB2" 10.0.2.2
link tor-cl 10.0.9.1 "$NS_CL" 10.0.9.2
link tor-be1 10.0.11.1 "$NS_BE1" 10.0.11.2
link tor-be2 10.0.12.1 "$NS_BE2" 10.0.12.2
link tor-api 10.0.13.1 "$NS_API" 10.0.13.2
# G2: a new namespace does not forward; L4 hash so one client spreads over both LBs.
ip netns exec "$NS_TOR" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv4/fib_multipath_hash_policy'
say "namespaces: ${ALL_NS[*]}"
say "tor: ip_forward=$(ip netns exec "$NS_TOR" cat /proc/sys/net/ipv4/ip_forward)," \
    "fib_multipath_hash_policy=$(ip netns exec "$NS_TOR" cat /proc/sys/net/ipv4/fib_multipath_hash_policy)"

# publish FILE: the central side publishes a document; sets PUB_REV to the
# revision the agents will report and T_PUB. Default mode: atomically
# replaces the API's file (temp + rename), the revision is the file's. etcd
# mode: one `lb-agent publish` (one transaction), the revision is etcd's.
publish() {
    if [ "$SOURCE" = etcd ]; then
        local out
        T_PUB=$(ms)
        printf '%s$ ip netns exec %s %s publish --to %s %s%s\n' "$B" "$NS_API" "$A" "$ETCD_URL" "${1#"$REPO"/}" "$N"
        out=$(ip netns exec "$NS_API" "$BIN" publish --to "$ETCD_URL" "$1" 2>&1) ||
            die "lb-agent publish $1 failed: $out" "${FAIL_LOGS[@]}"
        printf '%s\n' "$out" | sed 's/^/    /'
        PUB_REV=$(printf '%s\n' "$out" | sed -n 's/.* as etcd revision \([0-9]*\).*/\1/p' | tail -1)
        [ -n "$PUB_REV" ] || die "lb-agent publish wrote nothing for $1" "${FAIL_LOGS[@]}"
    else
        T_PUB=$(ms)
        cp "$1" "$LAB/api/.blue.json.tmp"
        mv -f "$LAB/api/.blue.json.tmp" "$LAB/api/blue.json"
        PUB_REV=$(sed -n 's/^ *"revision": *\([0-9]*\).*/\1/p' "$1" | head -1)
    fi
}

phase "Backends and the central API"
spawn be1 "$NS_BE1" "$LAB/be1.log" "$PY" "$FIX/backend.py" be1 8080
spawn be2 "$NS_BE2" "$LAB/be2.log" "$PY" "$FIX/backend.py" be2 8080
mkdir -p "$LAB/api"
FAIL_LOGS=("$LAB/be1.log" "$LAB/be2.log")
wait_until "be1 answering through the ToR" 15 ip netns exec "$NS_CL" curl -sf -m 1 http://10.0.11.2:8080/
wait_until "be2 answering through the ToR" 15 ip netns exec "$NS_CL" curl -sf -m 1 http://10.0.12.2:8080/
if [ "$SOURCE" = etcd ]; then
    # One etcd member in the api namespace: clients on 10.0.13.2:2379, its
    # peer port only on that namespace's loopback. Data in $LAB/etcd.
    spawn etcd "$NS_API" "$LAB/etcd.log" etcd --name demo --data-dir "$LAB/etcd" \
        --listen-client-urls http://10.0.13.2:2379 --advertise-client-urls http://10.0.13.2:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster demo=http://127.0.0.1:2380 --initial-cluster-state new
    FAIL_LOGS+=("$LAB/etcd.log")
    wait_until "etcd answering lb1" 20 ip netns exec "$NS_LB1" curl -sf -m 1 http://10.0.13.2:2379/health
    wait_until "etcd answering lb2" 20 ip netns exec "$NS_LB2" curl -sf -m 1 http://10.0.13.2:2379/health
    say "etcd $(etcd --version | sed -n 's/^etcd Version: //p') in $NS_API (PID $PID_etcd): up; publishing the first document:"
    publish "$FIX/blue.r1.json"
    say "be1 10.0.11.2:8080, be2 10.0.12.2:8080: up; $ETCD_URL: up (etcd revision $PUB_REV)"
else
    cp "$FIX/blue.r1.json" "$LAB/api/blue.json"
    PUB_REV=1
    spawn api "$NS_API" "$LAB/api.log" "$PY" "$FIX/api.py" 10.0.13.2 8000 "$LAB/api"
    FAIL_LOGS+=("$LAB/api.log")
    wait_until "the API answering lb2" 15 ip netns exec "$NS_LB2" curl -sf -m 1 "$API_URL"
    say "be1 10.0.11.2:8080, be2 10.0.12.2:8080: up; API $API_URL: up (revision 1)"
fi
REV1=$PUB_REV

render() { # render TEMPLATE N: fills @...@ placeholders for LB N (or the ToR)
    local n=$2 dir=$LAB/lb$2 url
    [ "$n" = 1 ] && url="file://$LAB/api/blue.json" || url=$API_URL
    if [ "$SOURCE" = etcd ]; then url=$ETCD_URL; fi
    sed -e "s|@N@|$n|g" -e "s|@NS@|$P-lb$n|g" -e "s|@DIR@|$dir|g" -e "s|@ASN@|6500$n|g" \
        -e "s|@URL@|$url|g" -e "s|@HAPROXY@|$HAPROXY_BIN|g" \
        -e "s|@INCLUDE@|$dir/bird/lb-agent-prefixes.conf|g" "$1"
}

phase "ToR: BIRD with merge paths on"
mkdir -p "$LAB/tor"
sed -e "s|@DIR@|$LAB/tor|g" -e "s|@NS@|$NS_TOR|g" "$FIX/bird-tor.conf" >"$LAB/tor/bird.conf"
spawn bird-tor "$NS_TOR" "$LAB/tor/bird.out" bird -f -c "$LAB/tor/bird.conf" -s "$LAB/tor/bird.ctl" -P "$LAB/tor/bird.pid"
FAIL_LOGS+=("$LAB/tor/bird.out" "$LAB/tor/bird.log")
wait_until "ToR BIRD control socket" 10 birdc -s "$LAB/tor/bird.ctl" show status
say "ToR BIRD up ($LAB/tor/bird.conf)"

for n in 1 2; do
    ns=$P-lb$n dir=$LAB/lb$n
    phase "lb$n: BIRD, HAProxy, lb-agent (namespace $ns)"
    mkdir -p "$dir/bird" "$dir/state" "$dir/data"
    render "$FIX/agent.toml.in" "$n" >"$dir/agent.toml"
    render "$FIX/bird-lb.conf" "$n" >"$dir/bird/bird.conf"
    render "$FIX/haproxy-bootstrap.cfg" "$n" >"$dir/haproxy.cfg"
    FAIL_LOGS+=("$dir/agent.log" "$dir/haproxy.log" "$dir/bird/bird.log" "$dir/bird/bird.out")
    "$BIN" check-config --config "$dir/agent.toml" >/dev/null ||
        die "lb$n agent.toml is invalid: $("$BIN" check-config --config "$dir/agent.toml" 2>&1)"
    # Fail-closed start (notes G4): BIRD reads a dummy-only include, announcing nothing
    # until the agent's checks pass. `lb-agent reset` writes it (BIRD is not running yet).
    "$BIN" reset --config "$dir/agent.toml" >/dev/null || die "lb-agent reset failed for lb$n"
    spawn "bird-lb$n" "$ns" "$dir/bird/bird.out" bird -f -c "$dir/bird/bird.conf" -s "$dir/bird/bird.ctl" -P "$dir/bird/bird.pid"
    wait_until "lb$n BIRD control socket" 10 birdc -s "$dir/bird/bird.ctl" show status
    # HAProxy master-worker with the master CLI; the bootstrap config has just the admin socket.
    spawn "haproxy-lb$n" "$ns" "$dir/haproxy.log" "$HAPROXY_BIN" -W -S "$dir/master.sock" -f "$dir/haproxy.cfg" -p "$dir/haproxy.pid"
    wait_until "lb$n HAProxy admin socket" 10 socat -u OPEN:/dev/null "UNIX-CONNECT:$dir/admin.sock"
    spawn "agent-lb$n" "$ns" "$dir/agent.log" "$BIN" run --config "$dir/agent.toml"
    say "lb$n: bird PID $(eval echo "\$PID_bird_lb$n"), haproxy master PID $(eval echo "\$PID_haproxy_lb$n"), lb-agent PID $(eval echo "\$PID_agent_lb$n")"
    say "      source: $(grep '^url' "$dir/agent.toml" | cut -d'"' -f2)"
done

# --- JSON helpers over the status socket ----------------------------------------
sock() { echo "$LAB/lb$1/status.sock"; }
# jget N PYEXPR: evaluates PYEXPR on lb N's /v1/status snapshot (as s).
jget() {
    local out
    out=$("$BIN" status --json --socket "$(sock "$1")" --timeout 3s 2>/dev/null) || { echo "?"; return 0; }
    printf '%s' "$out" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(eval(sys.argv[1]))' "$2" 2>/dev/null || echo "?"
}
nexthops() { # number of nexthops of the VIP in the ToR's kernel table
    local out
    out=$(timeout 5 ip -n "$NS_TOR" route show "$VIP" 2>/dev/null) || { echo "?"; return; }
    if [ -z "$out" ]; then echo 0; return; fi
    local multi
    multi=$(printf '%s\n' "$out" | grep -c 'nexthop via' || true)
    if [ "$multi" -gt 0 ]; then echo "$multi"; else echo 1; fi
}
has_nexthops() { [ "$(nexthops)" = "$1" ]; }
tor_established() {
    local out
    out=$(timeout 5 birdc -s "$LAB/tor/bird.ctl" show protocols 2>/dev/null) || return 1
    [ "$(printf '%s\n' "$out" | grep -cE '^lb[12] +BGP .*Established')" = 2 ]
}
agent_at() { # agent_at N REV: lb N applied REV and converged
    [ "$(jget "$1" '(s.get("revision"), s["haproxy"]["converged"])')" = "($2, True)" ]
}

phase "Waiting for the lab to converge"
wait_until "BGP sessions ToR<->lb1, ToR<->lb2 Established" 30 tor_established
say "BGP sessions ToR<->lb1 and ToR<->lb2: Established"
wait_until "lb1 applying revision $REV1" 40 agent_at 1 "$REV1"
wait_until "lb2 applying revision $REV1" 40 agent_at 2 "$REV1"
say "both agents applied revision $REV1 (rendered haproxy.cfg, reloaded through the master socket)"
wait_until "the ToR route to $VIP with 2 nexthops (both LBs healthy and announcing)" 40 has_nexthops 2
T_READY=$(ms)
ok "lab up in $(secs "$T_LAB0" "$T_READY") s"
STATE=running

# --- narration -----------------------------------------------------------------------
# One HTTP request from the client through the VIP: prints a one-line summary.
REQ_FAILS=0
REQ_LBS="" REQ_BES=""
request() {
    local out status lb be body
    if ! out=$(ip netns exec "$NS_CL" curl -sS -m 2 -i "http://$VIP/" 2>&1); then
        REQ_FAILS=$((REQ_FAILS + 1))
        printf '    #%-2s %sFAILED%s %s\n' "$1" "$R" "$N" "$(printf '%s' "$out" | tail -1)"
        return 0
    fi
    out=${out//$'\r'/}
    status=${out%%$'\n'*}
    body=${out##*$'\n'}
    lb=$(printf '%s\n' "$out" | sed -n 's/^x-lb: //Ip' | sed -n 1p)
    be=$(printf '%s\n' "$out" | sed -n 's/^x-backend: //Ip' | sed -n 1p)
    printf '    #%-2s %s   X-LB: %-4s X-Backend: %-4s body: %s\n' "$1" "$status" "$lb" "$be" "$body"
    REQ_LBS="$REQ_LBS $lb" REQ_BES="$REQ_BES $be"
}
requests() { # requests COUNT
    REQ_FAILS=0 REQ_LBS="" REQ_BES=""
    local i
    printf '%s$ for i in $(seq %s); do ip netns exec %s curl -si http://%s/; done   (summarised)%s\n' "$B" "$1" "$NS_CL" "$VIP" "$N"
    for i in $(seq 1 "$1"); do request "$i"; done
}
count_of() { printf '%s\n' $1 | grep -cx "$2" || true; }

banner "STEP 1/6  The ToR's ECMP route to the VIP: both LBs are nexthops"
say "Each LB's agent checks the service behind $VIP through its local HAProxy; all"
say "checks pass, so each agent lists the VIP in its BIRD include, BIRD exports the"
say "static route over eBGP, and the ToR's BIRD (merge paths on) installs one kernel"
say "route with both LBs as nexthops."
show ip -n "$NS_TOR" route show "$VIP"
show birdc -s "$LAB/tor/bird.ctl" show protocols
show cat "$LAB/lb1/bird/lb-agent-prefixes.conf"
[ "$(nexthops)" = 2 ] || die "the ToR route lost a nexthop" "${FAIL_LOGS[@]}"
ok "2 nexthops: via 10.0.1.2 (lb1) and via 10.0.2.2 (lb2)"

banner "STEP 2/6  HTTP through the VIP from the client"
say "The document's logic snippet \"http-response set-header X-LB {{ node.name }}\" is"
say "rendered per node, so every answer says which LB served it; the backend"
say "answers with its own name. The ToR hashes each new flow (L4) to one LB."
show ip netns exec "$NS_CL" curl -si "http://$VIP/"
requests 8
[ "$REQ_FAILS" = 0 ] || die "$REQ_FAILS of 8 requests failed" "${FAIL_LOGS[@]}"
ok "8/8 answered: lb1 x$(count_of "$REQ_LBS" lb1), lb2 x$(count_of "$REQ_LBS" lb2); be1 x$(count_of "$REQ_BES" be1), be2 x$(count_of "$REQ_BES" be2)"
if [ "$(count_of "$REQ_LBS" lb1)" = 0 ] || [ "$(count_of "$REQ_LBS" lb2)" = 0 ]; then
    note "all 8 flows hashed to one LB this time (chance about 1/128); the route above has both"
fi

banner "STEP 3/6  A live runtime change: drain be1, no reload"
if [ "$SOURCE" = etcd ]; then
    say "One \`lb-agent publish\` writes the changed document to etcd: it diffs the keys"
    say "against etcd and writes the changed ones (here be1's server key) in one"
    say "transaction. lb1 and lb2 both watch the prefix and receive just that key. A"
    say "server state is applied through the HAProxy runtime socket: no reload."
else
    say "The central API publishes revision 2 of group \"blue\" with server be1 in state"
    say "\"drain\". lb1 reads it from file://, lb2 from the HTTP API (long-poll: the API holds"
    say "the request until the document changes). A server state is applied through the"
    say "HAProxy runtime socket: no reload."
fi
r1=$(jget 1 's["haproxy"]["reloads"]') c1=$(jget 1 's["haproxy"]["runtime_commands"]')
r2=$(jget 2 's["haproxy"]["reloads"]') c2=$(jget 2 's["haproxy"]["runtime_commands"]')
say "before: lb1 reloads=$r1 runtime_commands=$c1; lb2 reloads=$r2 runtime_commands=$c2"
shown "diff -u fixtures/demo/blue.r1.json fixtures/demo/blue.r2-drain-be1.json" \
    sh -c 'diff -u fixtures/demo/blue.r1.json fixtures/demo/blue.r2-drain-be1.json; true'
[ "$SOURCE" = etcd ] || say "$ cp fixtures/demo/blue.r2-drain-be1.json $LAB/api/blue.json   (temp file + rename)"
publish "$FIX/blue.r2-drain-be1.json"
REV2=$PUB_REV
wait_until "lb1 applying revision $REV2" 20 agent_at 1 "$REV2"
wait_until "lb2 applying revision $REV2" 20 agent_at 2 "$REV2"
# How long each agent took to notice, from its own log (our status polling is slower).
accepted_after() { # accepted_after N REV: ms from publication to "accepted a new document"
    local ts
    ts=$(grep -m1 -E "accepted a new document( from etcd)? revision=$2 " "$LAB/lb$1/agent.log" | awk '{print $1}')
    [ -n "$ts" ] && ts=$(date -d "$ts" +%s%3N 2>/dev/null) && echo "$((ts - T_PUB)) ms" || echo "?"
}
converge_ms() { # converge_ms N REV: the agent's own "converged ... took_ms"
    grep "converged revision=$2 " "$LAB/lb$1/agent.log" | sed -n 's/.*took_ms=\([0-9]*\).*/\1 ms/p' | head -1
}
if [ "$SOURCE" = etcd ]; then
    for n in 1 2; do
        say "lb$n (etcd watch) accepted etcd revision $REV2 $(accepted_after "$n" "$REV2") after \`lb-agent publish\` started, converged in $(converge_ms "$n" "$REV2")"
    done
    say "The same publish as each LB's status socket shows it (the revision is etcd's):"
    for n in 1 2; do
        shown "ip netns exec $P-lb$n $A status --socket $(sock "$n") | grep -E 'revision|source|stream'" \
            sh -c "ip netns exec $P-lb$n '$BIN' status --socket '$(sock "$n")' | grep -E 'revision|source|stream'"
    done
    ok "one publish (etcd revision $REV2) reached both LBs: lb1 and lb2 report revision $(jget 1 's.get("revision")') and $(jget 2 's.get("revision")')"
else
    say "lb1 (file://, checked every 500 ms) accepted revision 2 $(accepted_after 1 2) after the publication, converged in $(converge_ms 1 2)"
    say "lb2 (HTTP long-poll)                accepted revision 2 $(accepted_after 2 2) after the publication, converged in $(converge_ms 2 2)"
fi
R1=$(jget 1 's["haproxy"]["reloads"]') C1=$(jget 1 's["haproxy"]["runtime_commands"]')
R2=$(jget 2 's["haproxy"]["reloads"]') C2=$(jget 2 's["haproxy"]["runtime_commands"]')
say "after:  lb1 reloads=$R1 runtime_commands=$C1; lb2 reloads=$R2 runtime_commands=$C2"
[ "$R1" = "$r1" ] && [ "$R2" = "$r2" ] || die "a reload happened for a server state change" "${FAIL_LOGS[@]}"
ok "reloads unchanged on both LBs; runtime commands +$((C1 - c1)) on lb1, +$((C2 - c2)) on lb2"
say "HAProxy's own view (srv_admin_state 8 = DRAIN; the _slotN servers are free pre-allocated slots):"
servers_state() {
    echo "show servers state web" | socat stdio "UNIX-CONNECT:$LAB/lb$1/admin.sock" |
        awk 'function row(a, b, c, d, e, f) { printf "%-8s %-8s %-10s %-13s %-16s %s\n", a, b, c, d, e, f }
             NR == 1 { next }
             /^#/ { row("be_name", "srv_name", "srv_addr", "srv_op_state", "srv_admin_state", "srv_uweight"); next }
             NF > 8 { row($2, $4, $5, $6, $7, $8) }'
}
shown "echo \"show servers state web\" | socat stdio $LAB/lb1/admin.sock   (columns 2,4-8)" servers_state 1
requests 6
[ "$REQ_FAILS" = 0 ] || die "$REQ_FAILS of 6 requests failed" "${FAIL_LOGS[@]}"
[ "$(count_of "$REQ_BES" be2)" = 6 ] || die "a drained server still got new requests" "${FAIL_LOGS[@]}"
ok "6/6 served by be2: be1 takes no new requests"
shown "ip netns exec $NS_LB1 $A status --socket $(sock 1)" ip netns exec "$NS_LB1" "$BIN" status --socket "$(sock 1)"
if [ "$SOURCE" = etcd ]; then
    say "Back to ready (the next etcd revision, again a runtime change):"
else
    say "Back to ready (revision 3, again a runtime change):"
fi
sed -e 's/"revision": 1,/"revision": 3,/' "$FIX/blue.r1.json" >"$LAB/api/.r3.json"
publish "$LAB/api/.r3.json"
rm -f "$LAB/api/.r3.json"
wait_until "lb1 applying revision $PUB_REV" 20 agent_at 1 "$PUB_REV"
wait_until "lb2 applying revision $PUB_REV" 20 agent_at 2 "$PUB_REV"
R1b=$(jget 1 's["haproxy"]["reloads"]') R2b=$(jget 2 's["haproxy"]["reloads"]')
[ "$R1b" = "$r1" ] && [ "$R2b" = "$r2" ] || die "a reload happened for a server state change" "${FAIL_LOGS[@]}"
ok "revision $PUB_REV applied on both LBs, reloads still lb1=$R1b lb2=$R2b"

banner "STEP 4/6  A failure on lb1: its HAProxy hangs, the VIP is withdrawn there"
say "We freeze lb1's HAProxy worker (SIGSTOP): connections to the VIP on lb1 are"
say "accepted by the kernel but never answered. lb1's agent sees its service check"
say "time out twice (interval 500ms, timeout 300ms, fall 2: about 1.3 s at most),"
say "removes the VIP from BIRD's include and reconfigures BIRD; the ToR route"
say "shrinks to lb2 alone. lb2, which checks its own HAProxy, keeps announcing."
shown "echo \"show proc\" | socat stdio $LAB/lb1/master.sock" sh -c "echo 'show proc' | socat stdio 'UNIX-CONNECT:$LAB/lb1/master.sock'"
WORKER=$(echo 'show proc' | socat stdio "UNIX-CONNECT:$LAB/lb1/master.sock" |
    awk '/^# workers/ { w = 1; next } /^#/ { w = 0 } w && $2 == "worker" && !found { print $1; found = 1 }')
[ -n "$WORKER" ] && alive_as "$WORKER" haproxy || die "could not find lb1's HAProxy worker" "${FAIL_LOGS[@]}"
echo "$WORKER" >"$LAB/frozen-worker"
say "$ kill -STOP $WORKER      # lb1's HAProxy worker"
T_STOP=$(ms)
kill -STOP "$WORKER"
wait_until "the ToR route shrinking to one nexthop" 20 has_nexthops 1
T_W=$(ms)
say "withdrawn: the ToR route changed $((T_W - T_STOP)) ms after the SIGSTOP (polled every 200 ms)"
show ip -n "$NS_TOR" route show "$VIP"
shown "ip netns exec $NS_LB1 $A vips --socket $(sock 1)" ip netns exec "$NS_LB1" "$BIN" vips --socket "$(sock 1)"
shown "grep -E 'announcements changed|unhealthy|withdraw' $LAB/lb1/agent.log | tail -n 4" \
    sh -c "grep -E 'announcements changed|unhealthy|withdraw' '$LAB/lb1/agent.log' | tail -n 4"
show cat "$LAB/lb1/bird/lb-agent-prefixes.conf"
case "$(ip -n "$NS_TOR" route show "$VIP")" in
*"via 10.0.2.2"*) ok "only lb2 (10.0.2.2) is left as nexthop" ;;
*) die "the remaining nexthop is not lb2" "${FAIL_LOGS[@]}" ;;
esac
requests 6
[ "$REQ_FAILS" = 0 ] || die "$REQ_FAILS of 6 requests failed while lb2 alone announces" "${FAIL_LOGS[@]}"
[ "$(count_of "$REQ_LBS" lb2)" = 6 ] || die "requests still reached lb1 after the withdrawal" "${FAIL_LOGS[@]}"
ok "6/6 new flows answered, all by lb2 (flows that reached lb1 in the second before the withdrawal hang with it)"
say ""
say "$ kill -CONT $WORKER      # lb1's HAProxy recovers"
T_CONT=$(ms)
kill -CONT "$WORKER"
rm -f "$LAB/frozen-worker"
wait_until "the ToR route back to two nexthops" 20 has_nexthops 2
T_B=$(ms)
say "re-announced: two nexthops again $((T_B - T_CONT)) ms after the SIGCONT (rise 2; a changing service is re-checked every 200 ms)"
show ip -n "$NS_TOR" route show "$VIP"

banner "STEP 5/6  lb-agent vips on both LBs"
shown "ip netns exec $NS_LB1 $A vips --socket $(sock 1)" ip netns exec "$NS_LB1" "$BIN" vips --socket "$(sock 1)"
shown "ip netns exec $NS_LB2 $A vips --socket $(sock 2)" ip netns exec "$NS_LB2" "$BIN" vips --socket "$(sock 2)"
requests 4
[ "$REQ_FAILS" = 0 ] || die "$REQ_FAILS of 4 requests failed after the recovery" "${FAIL_LOGS[@]}"
ok "4/4 answered after the recovery"

banner "STEP 6/6  AZ-aware routing: evacuate az1 by a document change, no reload"
say "Revision 4 puts be1 in zone az1 and be2 in az2 and routes pool web by AZ (a"
say "reload: each zone becomes a backend). lb1 is in az1 and lb2 in az2 (agent.toml"
say "[node] az); the client's subnet is in no client_subnets map, so a request's zone"
say "is the LB's: lb1 sends its traffic to be1, lb2 to be2."
shown "diff -u fixtures/demo/blue.r1.json fixtures/demo/blue.r4-az.json" \
    sh -c 'diff -u fixtures/demo/blue.r1.json fixtures/demo/blue.r4-az.json; true'
publish "$FIX/blue.r4-az.json"
wait_until "lb1 applying revision $PUB_REV" 30 agent_at 1 "$PUB_REV"
wait_until "lb2 applying revision $PUB_REV" 30 agent_at 2 "$PUB_REV"
routing() { ip netns exec "$1" "$BIN" status --socket "$2" | grep -A1 '^ *routing' || true; }
shown "ip netns exec $NS_LB1 $A status --socket $(sock 1) | grep -A1 routing" routing "$NS_LB1" "$(sock 1)"
requests 8
[ "$REQ_FAILS" = 0 ] || die "$REQ_FAILS of 8 requests failed with AZ routing" "${FAIL_LOGS[@]}"
ok "before: az1's traffic (via lb1) -> $(printf '%s\n' $REQ_LBS | paste -d: - <(printf '%s\n' $REQ_BES) | grep '^lb1:' | cut -d: -f2 | sort | uniq -c | tr -s ' ' | tr '\n' ',' | sed 's/,$//'); az2's (via lb2) -> $(printf '%s\n' $REQ_LBS | paste -d: - <(printf '%s\n' $REQ_BES) | grep '^lb2:' | cut -d: -f2 | sort | uniq -c | tr -s ' ' | tr '\n' ',' | sed 's/,$//')"
r1=$(jget 1 's["haproxy"]["reloads"]') r2=$(jget 2 's["haproxy"]["reloads"]')
say "Revision 5 evacuates az1 (\"evacuated\": [\"az1\"]): be1 goes to maint in every backend"
say "through the runtime socket; az1's clients spill to az2."
sed -e 's/"revision": 4,/"revision": 5,/' -e 's/"evacuated": \[\]/"evacuated": ["az1"]/' \
    "$FIX/blue.r4-az.json" >"$LAB/api/.r5.json"
publish "$LAB/api/.r5.json"
rm -f "$LAB/api/.r5.json"
wait_until "lb1 applying revision $PUB_REV" 20 agent_at 1 "$PUB_REV"
wait_until "lb2 applying revision $PUB_REV" 20 agent_at 2 "$PUB_REV"
shown "ip netns exec $NS_LB1 $A status --socket $(sock 1) | grep -A1 routing" routing "$NS_LB1" "$(sock 1)"
requests 8
[ "$REQ_FAILS" = 0 ] || die "$REQ_FAILS of 8 requests failed after the evacuation" "${FAIL_LOGS[@]}"
[ "$(count_of "$REQ_BES" be2)" = 8 ] || die "an evacuated zone's server still got requests" "${FAIL_LOGS[@]}"
R1=$(jget 1 's["haproxy"]["reloads"]') R2=$(jget 2 's["haproxy"]["reloads"]')
[ "$R1" = "$r1" ] && [ "$R2" = "$r2" ] || die "evacuating a zone reloaded HAProxy" "${FAIL_LOGS[@]}"
ok "after: az1's traffic (via lb1) -> be2 (az2), 8/8 on be2; reloads unchanged (lb1=$R1 lb2=$R2)"

T_END=$(ms)
banner "Done"
if [ -n "${T_BUILD0:-}" ]; then
    say "build step: $(secs "$T_BUILD0" "$T_BUILD1") s ($PROFILE)"
fi
say "lab up: $(secs "$T_LAB0" "$T_READY") s; narration: $(secs "$T_READY" "$T_END") s"

if [ "$KEEP" = 1 ]; then
    if [ "$SOURCE" = etcd ]; then
        PUBLISH_HINT="Publish a change: ip netns exec $NS_API $A export --from $ETCD_URL >/tmp/blue.json,
  edit it, then ip netns exec $NS_API $A publish --to $ETCD_URL /tmp/blue.json;
  both agents pick it up (the revision is etcd's)."
    else
        PUBLISH_HINT="Publish a change: copy $LAB/api/blue.json, raise \"revision\", edit, then mv the
  copy over $LAB/api/blue.json; both agents pick it up."
    fi
    cat <<EOF

The lab keeps running. Look around:
  ip netns list                                    # $P-{tor,lb1,lb2,be1,be2,api,client}
  ip netns exec $NS_LB1 $A status --socket $(sock 1)
  ip netns exec $NS_LB2 $A vips --socket $(sock 2)
  ip netns exec $NS_LB1 $A drain --reason test --socket $(sock 1)   # then: undrain
  ip -n $NS_TOR route show $VIP
  birdc -s $LAB/tor/bird.ctl show route all
  ip netns exec $NS_CL curl -si http://$VIP/
  echo "show servers state web" | socat stdio $LAB/lb1/admin.sock
  cat $LAB/lb1/haproxy.cfg                         # rendered by lb-agent
  tail -f $LAB/lb1/agent.log $LAB/api.log
  $PUBLISH_HINT

Tear down (namespaces, processes, $LAB):
  ./demo.sh teardown
EOF
    STATE=finished
else
    phase "Teardown (--no-keep)"
    teardown
    nleft=$(ip netns list | grep -c "^$P-" || true)
    say "namespaces left: $nleft"
    STATE=finished
fi
say ""
say "${B}total time: $(secs "$T_START" "$(ms)") s${N}"
