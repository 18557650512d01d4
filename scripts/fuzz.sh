#!/usr/bin/env bash
# Builds every cargo-fuzz target of fuzz/ and runs each for SECONDS (default 30).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Each target starts from its committed corpus (fuzz/corpus/TARGET, copied,
# never written to) plus seeds made from fixtures/ at every run. With
# FUZZ_KEEP=1 (the long runs) the run writes into fuzz/corpus/TARGET and
# minimizes it afterwards (`cargo fuzz cmin`), for committing. FUZZ_RUNS=N
# stops a target after N executions (whichever of SECONDS and N comes first). Exits
# non-zero when a target crashes (panic, abort, timeout, out of memory); the
# input is kept under fuzz/artifacts/TARGET/ and the log is printed.
# FUZZ_CGU=N builds with N codegen units (cargo-fuzz's default is 1: the
# fastest executions, the slowest build); CI's short runs use 16.
# FUZZ_OPT=N builds at opt-level N without debug info (cargo-fuzz's release
# profile is opt-level 3): CI's short runs use 1, a build 40% shorter for
# executions about half as fast (figures: docs/reliability.md).
# FUZZ_SAN=none builds without AddressSanitizer (cargo-fuzz's default is
# address): faster executions; panics, aborts, timeouts and out-of-memory are
# still caught, memory errors in unsafe code are not (why the long runs of the
# slowest targets may use it: docs/reliability.md).
# Prints executions per target. Uses a nightly toolchain when there is one
# (otherwise see below) and cargo-fuzz
# (installed here, pinned, when missing).
# What each target checks and the long runs: docs/reliability.md.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-30}
shift || true
[[ $secs =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2; }

# cargo-fuzz passes rustc unstable flags (-Zsanitizer, coverage options):
# a nightly toolchain takes them; without one (a machine with only its one
# stable toolchain, as CI's), the stable compiler is told to accept them with
# RUSTC_BOOTSTRAP=1, the same compiler with its feature gate opened.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=nightly
else
    toolchain=$(rustup show active-toolchain 2>/dev/null | cut -d' ' -f1)
    toolchain=${toolchain:-stable}
    export RUSTC_BOOTSTRAP=1
    echo "!!! fuzz: no nightly toolchain; using $toolchain with RUSTC_BOOTSTRAP=1" >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked --quiet cargo-fuzz@0.13.2
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +"$toolchain" fuzz list)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/lb-agent-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Seeds from the repository's fixtures, in each target's input format.
seed() {
    local t=$1 dir=$2 f n=0
    mkdir -p "$dir"
    case $t in
    document)
        for f in fixtures/api/valid/*.json fixtures/api/invalid/*.json \
            fixtures/hostile/*.json fixtures/demo/*.json; do
            cp "$f" "$dir/$(basename "$(dirname "$f")")-$(basename "$f")"
        done ;;
    haproxy_replies)
        cp fixtures/haproxy/*.txt "$dir/" ;;
    agent_toml)
        cp fixtures/config/valid/*.toml fixtures/config/invalid/*.toml "$dir/"
        cp packaging/agent.toml "$dir/packaged.toml"
        cp fixtures/demo/agent.toml.in "$dir/demo.toml" ;;
    bird_control)
        # Transcripts: `S:` lines are what BIRD sent (`$` ends a line, `^I` is a TAB).
        for f in fixtures/bird/*.txt; do
            grep '^S: ' "$f" | sed -e 's/^S: //' -e 's/\$$//' -e 's/\^I/\t/g' \
                >"$dir/$(basename "$f")" || true
        done ;;
    bird_include)
        sed -n 's/^\/\/! \(define .*\)$/\1/p' src/bird/include.rs >"$dir/module-doc.conf"
        grep "vipfile.sh lb1 raw '" fixtures/bird/*.txt | sed "s/.*raw '\(.*\)'.*/\1/" |
            while IFS= read -r line; do
                n=$((n + 1)); printf '%s\n' "$line" >"$dir/raw-$n.conf"
            done ;;
    snippet | template)
        # The logic templates of the fixtures (python3 reads the JSON; without
        # it the committed corpus, made from the same templates, is the seed).
        if command -v python3 >/dev/null; then
            python3 - "$t" "$dir" fixtures/api/valid/*.json fixtures/api/invalid/*.json \
                fixtures/hostile/*.json fixtures/demo/*.json <<'PY'
import json, sys
target, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
n = 0
for path in files:
    try:
        doc = json.load(open(path))
    except Exception:
        continue
    for logic in doc.get("logic", []) if isinstance(doc, dict) else []:
        t = logic.get("template") if isinstance(logic, dict) else None
        if not isinstance(t, str):
            continue
        for sel in ([b"\x00", b"\x03"] if target == "snippet" else [b""]):
            n += 1
            open(f"{out}/{n}", "wb").write(sel + t.encode())
PY
        fi ;;
    esac
}

max_len() {
    case $1 in
    template) echo 20000 ;;   # past the 16 KiB template limit
    document) echo 32768 ;;
    *) echo 8192 ;;
    esac
}

build=(--sanitizer "${FUZZ_SAN:-address}")
[[ -n ${FUZZ_CGU:-} ]] && build+=(--codegen-units "$FUZZ_CGU")
if [[ -n ${FUZZ_OPT:-} ]]; then
    [[ $FUZZ_OPT =~ ^[0-3]$ ]] || { echo "FUZZ_OPT must be 0-3, not '$FUZZ_OPT'" >&2; exit 2; }
    export CARGO_PROFILE_RELEASE_OPT_LEVEL=$FUZZ_OPT CARGO_PROFILE_RELEASE_DEBUG=0
fi
echo "== cargo fuzz build ($toolchain, sanitizer ${FUZZ_SAN:-address}${FUZZ_CGU:+, $FUZZ_CGU codegen units}${FUZZ_OPT:+, opt-level $FUZZ_OPT})"
start=$(date +%s)
cargo +"$toolchain" fuzz build "${build[@]}"
echo "== built in $(($(date +%s) - start)) s"

failed=()
summary=()
for t in "${targets[@]}"; do
    corpus="$work/$t/corpus"
    seeds="$work/$t/seeds"
    if [[ ${FUZZ_KEEP:-0} == 1 ]]; then
        corpus="$root/fuzz/corpus/$t"
        mkdir -p "$corpus"
    else
        mkdir -p "$corpus"
        if [[ -d fuzz/corpus/$t ]]; then cp -r "fuzz/corpus/$t/." "$corpus/"; fi
    fi
    seed "$t" "$seeds"
    log="$work/$t.log"
    echo "== $t: ${secs} s"
    rc=0
    cargo +"$toolchain" fuzz run "${build[@]}" "$t" "$corpus" "$seeds" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -max_len="$(max_len "$t")" ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} -print_final_stats=1 >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    size=$(find "$corpus" -type f | wc -l)
    if [[ $rc -ne 0 ]]; then
        echo "!!! $t crashed (exit $rc); input under fuzz/artifacts/$t/"
        grep -A12 -m1 -E 'panicked at|ERROR: (AddressSanitizer|libFuzzer)' "$log" || true
        tail -n 25 "$log"
        failed+=("$t")
        summary+=("$(printf '%-16s %12s %10s  CRASH' "$t" "${execs:-?}" "$size")")
    else
        if [[ ${FUZZ_KEEP:-0} == 1 ]]; then
            cargo +"$toolchain" fuzz cmin "${build[@]}" "$t" "$corpus" >"$work/$t.cmin.log" 2>&1 ||
                { echo "!!! $t: corpus minimization failed"; tail -n 5 "$work/$t.cmin.log"; }
            size=$(find "$corpus" -type f | wc -l)
        fi
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
        summary+=("$(printf '%-16s %12s %10s  ok (%s exec/s)' "$t" "${execs:-?}" "$size" "${rate:-?}")")
    fi
done

echo
printf '%-16s %12s %10s  %s\n' target executions corpus result
printf '%s\n' "${summary[@]}"
echo "== total $(($(date +%s) - start)) s"
if [[ ${#failed[@]} -ne 0 ]]; then
    echo "!!! fuzz: crashes in ${failed[*]}"
    exit 1
fi
