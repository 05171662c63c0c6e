#!/usr/bin/env bash
# Run tnas bench binaries and the libtorch peer bench in one go and print
#   name | tnas us | libtorch us | speedup (libtorch/tnas)
# joined on the Google Benchmark name (e.g. BM_dw3x3_fwd/16/32).
#
# usage: bench/libtorch/run_compare.sh [options] TNAS_BENCH... [-- EXTRA_BENCH_ARGS...]
#   --libtorch BIN      libtorch bench (default: build-libtorch/bench_libtorch_ops)
#   --filter REGEX      passed to every binary as --benchmark_filter
#   --min-time T        --benchmark_min_time (default 0.2)
#   --repetitions N     --benchmark_repetitions; N>1 compares medians (default 1)
#   --threads N         OMP_NUM_THREADS for every binary (default: $OMP_NUM_THREADS or 2)
#   --malloc-default    keep glibc's default malloc trimming (see below)
#   --out DIR           keep the JSON files in DIR (default: a temp dir, removed)
#   anything after --   passed verbatim to every binary
#
# Allocator: on VMs where first-touch page faults are expensive, glibc's default
# of unmapping/trimming freed multi-MiB blocks makes every iteration fault its
# output buffers in again, which can cost more than the kernel itself. By default
# this script runs *both* sides with
#   GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824
# so freed blocks are recycled; --malloc-default turns that off for both sides.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

libtorch_bin="$root/build-libtorch/bench_libtorch_ops"
filter=""
min_time="0.2"
reps="1"
threads="${OMP_NUM_THREADS:-2}"
keep_heap=1
out_dir=""
tnas_bins=()
extra=()

die() { echo "run_compare.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --libtorch) libtorch_bin="${2:?}"; shift 2 ;;
    --libtorch=*) libtorch_bin="${1#*=}"; shift ;;
    --filter) filter="${2:?}"; shift 2 ;;
    --filter=*) filter="${1#*=}"; shift ;;
    --min-time) min_time="${2:?}"; shift 2 ;;
    --min-time=*) min_time="${1#*=}"; shift ;;
    --repetitions) reps="${2:?}"; shift 2 ;;
    --repetitions=*) reps="${1#*=}"; shift ;;
    --threads) threads="${2:?}"; shift 2 ;;
    --threads=*) threads="${1#*=}"; shift ;;
    --malloc-default) keep_heap=0; shift ;;
    --out) out_dir="${2:?}"; shift 2 ;;
    --out=*) out_dir="${1#*=}"; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option $1 (use -- to pass flags to the binaries)" ;;
    *) tnas_bins+=("$1"); shift ;;
  esac
done

[[ ${#tnas_bins[@]} -gt 0 ]] || die "give at least one tnas bench binary (e.g. build/bench/bench_ops)"
[[ -x "$libtorch_bin" ]] || die "libtorch bench not found: $libtorch_bin (build it, see bench/libtorch/README.md)"
for b in "${tnas_bins[@]}"; do [[ -x "$b" ]] || die "not an executable: $b"; done
command -v python3 >/dev/null || die "python3 is needed for the join"

if [[ -z "$out_dir" ]]; then
  out_dir="$(mktemp -d)"
  trap 'rm -rf "$out_dir"' EXIT
else
  mkdir -p "$out_dir"
fi

common=(--benchmark_min_time="$min_time" --benchmark_repetitions="$reps")
[[ "$reps" -gt 1 ]] && common+=(--benchmark_report_aggregates_only=true)
[[ -n "$filter" ]] && common+=(--benchmark_filter="$filter")
common+=("${extra[@]}")

env_run=(env OMP_NUM_THREADS="$threads")
if [[ $keep_heap -eq 1 ]]; then
  env_run+=(GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824
            LIBTORCH_BENCH_KEEP_HEAP=1)
else
  env_run+=(LIBTORCH_BENCH_KEEP_HEAP=0)
fi

# Console output of the binaries goes to stderr; stdout carries only the table.
run_one() {  # bin json
  echo "== $1" >&2
  "${env_run[@]}" "$1" "${common[@]}" --benchmark_out="$2" --benchmark_out_format=json >&2 ||
    echo "run_compare.sh: warning: $1 exited with $?" >&2
}

tnas_jsons=()
i=0
for b in "${tnas_bins[@]}"; do
  j="$out_dir/tnas_${i}_$(basename "$b").json"
  run_one "$b" "$j"
  tnas_jsons+=("$j")
  i=$((i + 1))
done
lt_json="$out_dir/libtorch.json"
run_one "$libtorch_bin" "$lt_json"

python3 - "$lt_json" "${tnas_jsons[@]}" <<'PY'
import json, math, re, sys

UNIT_US = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}
# Name parts Google Benchmark appends for run options; drop them for the join.
OPT = re.compile(r"/(real_time|manual_time|process_time|"
                 r"(min_time|min_warmup_time|repeats|iterations):[^/]*)")

def load(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        print(f"run_compare.sh: warning: cannot read {path}: {e}", file=sys.stderr)
        return {}, {}
    iters, medians = {}, {}
    for b in data.get("benchmarks", []):
        if b.get("error_occurred"):
            continue
        name = OPT.sub("", b.get("run_name", b["name"]))
        t = b["real_time"] * UNIT_US[b.get("time_unit", "ns")]
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians[name] = t
        else:
            iters.setdefault(name, []).append(t)
    out = {}
    for n, ts in iters.items():  # no aggregates: median of the repetitions
        ts = sorted(ts)
        m = len(ts) // 2
        out[n] = ts[m] if len(ts) % 2 else 0.5 * (ts[m - 1] + ts[m])
    out.update(medians)
    return out, data.get("context", {})

lt, lt_ctx = load(sys.argv[1])
tn = {}
for p in sys.argv[2:]:
    d, _ = load(p)
    for n, t in d.items():
        if n in tn:
            print(f"run_compare.sh: warning: {n} in more than one tnas binary; keeping the first",
                  file=sys.stderr)
            continue
        tn[n] = t

names = list(lt) + [n for n in tn if n not in lt]
if not names:
    sys.exit("run_compare.sh: no benchmark results")
w = max(len("name"), max(len(n) for n in names))
print(f"libtorch {lt_ctx.get('torch_version', '?')}, torch threads "
      f"{lt_ctx.get('torch_num_threads', '?')}, keep_heap {lt_ctx.get('keep_heap', '?')}; "
      "times are real time in microseconds (median if repeated)")
print(f"{'name':<{w}} | {'tnas us':>10} | {'libtorch us':>11} | {'speedup':>7}")
print(f"{'-' * w}-|-{'-' * 10}-|-{'-' * 11}-|-{'-' * 7}")
logs = []
for n in names:
    a, b = tn.get(n), lt.get(n)
    fa = f"{a:10.1f}" if a is not None else f"{'-':>10}"
    fb = f"{b:11.1f}" if b is not None else f"{'-':>11}"
    if a and b:
        s = b / a
        logs.append(math.log(s))
        fs = f"{s:7.2f}"
    else:
        fs = f"{'-':>7}"
    print(f"{n:<{w}} | {fa} | {fb} | {fs}")
if logs:
    print(f"geomean speedup (libtorch/tnas) over {len(logs)} matched cases: "
          f"{math.exp(sum(logs) / len(logs)):.2f}  (>1: tnas faster)")
PY
