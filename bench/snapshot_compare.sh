#!/usr/bin/env bash
# etcd 3.4 and ultraplane on the same data (WORK/big.db from bench/snapshot_big.py), side by side:
# 3 alternating rounds of `etcdctl snapshot save` and `etcdctl endpoint hashkv` against each.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/snapw}
cd "$work"
rm -rf up.data big.etcd
export ETCDCTL_API=3
etcdctl snapshot restore big.db --data-dir big.etcd >/dev/null
etcd --data-dir big.etcd --listen-client-urls http://127.0.0.1:23793 --advertise-client-urls http://127.0.0.1:23793 \
  --listen-peer-urls http://127.0.0.1:23803 --log-level warn >big.log 2>&1 & etcd_pid=$!
"$repo/.venv/bin/ultraplane" store --data-dir up.data --restore big.db --listen-client-urls http://127.0.0.1:23794 \
  --advertise-client-urls http://127.0.0.1:23794 --unsafe-no-fsync >up.log 2>&1 & up_pid=$!
trap 'kill $etcd_pid $up_pid' EXIT
for port in 23793 23794; do
  until etcdctl --endpoints=127.0.0.1:$port endpoint health >/dev/null 2>&1; do sleep 0.5; done
done
for round in 1 2 3; do
  for port in 23793 23794; do
    start=$(date +%s.%N); etcdctl --endpoints=127.0.0.1:$port --command-timeout=120s snapshot save s$port.db >/dev/null
    saved=$(date +%s.%N); hash=$(etcdctl --endpoints=127.0.0.1:$port --command-timeout=120s endpoint hashkv -w json)
    done_at=$(date +%s.%N)
    echo "round $round $([ $port = 23793 ] && echo etcd || echo ultraplane): save $(echo "$saved - $start" | bc) s," \
      "hashkv $(echo "$done_at - $saved" | bc) s, $(echo "$hash" | grep -o '"hash":[0-9]*')"
  done
done
