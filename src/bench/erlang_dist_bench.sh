#!/bin/sh
# Erlang/OTP distribution peer of `vcos bench cluster`: compile erlang_dist_bench.erl and run
# two nodes on loopback (epmd and the distribution listener bound to 127.0.0.1), a gen_server
# on node B, the client on node A. Needs apt package erlang-base; no network beyond loopback.
# Usage: erlang_dist_bench.sh ASKS CONCURRENCY TELLS WINDOW RUNS [workdir]
#        (default workdir /tmp/peers/erlang_dist)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ASKS=${1:-20000}
CONC=${2:-1}
TELLS=${3:-100000}
WINDOW=${4:-1000}
RUNS=${5:-3}
W=${6:-/tmp/peers/erlang_dist}
mkdir -p "$W"
erlc -o "$W" "$HERE/erlang_dist_bench.erl"
# epmd (started by the first erl) listens on loopback only.
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_EPMD_ADDRESS
COOKIE="vcos_bench_$$"
B="vcos_dist_b_$$@127.0.0.1"
A="vcos_dist_a_$$@127.0.0.1"
LOOPBACK="-kernel inet_dist_use_interface {127,0,0,1}"
# shellcheck disable=SC2086
timeout 600 erl -noshell -name "$B" -setcookie "$COOKIE" $LOOPBACK -pa "$W" -s erlang_dist_bench server &
BPID=$!
trap 'kill "$BPID" 2>/dev/null || true' EXIT INT TERM
# shellcheck disable=SC2086
timeout 600 erl -noshell -name "$A" -setcookie "$COOKIE" $LOOPBACK -pa "$W" \
    -s erlang_dist_bench client "$B" "$ASKS" "$CONC" "$TELLS" "$WINDOW" "$RUNS"
