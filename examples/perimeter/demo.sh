#!/usr/bin/env bash
# The walkthrough of examples/perimeter/README.md, end to end, on one machine: three network
# namespaces (client, gateway, controller) on one bridge. Exits non-zero if any step fails.
# Needs root, nft (nftables), iproute2 and a built kagi (KAGI=path, default target/release/kagi,
# then target/debug/kagi).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
KAGI=${KAGI:-}
if [ -z "$KAGI" ]; then
  for k in "$root/target/release/kagi" "$root/target/debug/kagi"; do
    if [ -x "$k" ]; then KAGI=$k; break; fi
  done
fi
[ -n "$KAGI" ] && [ -x "$KAGI" ] || { echo "demo: build kagi first (cargo build --release -p kagi-cli) or set KAGI" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces and nftables)" >&2; exit 1; }
command -v nft >/dev/null || { echo "demo: needs nft (apt-get install nftables)" >&2; exit 1; }

DIR=$(mktemp -d /tmp/kagi-perimeter-demo.XXXXXX)
tag=$$
NS_HUB=kdhub$tag NS_CLI=kdcli$tag NS_GW=kdgw$tag NS_CTL=kdctl$tag
GW=10.230.0.1 CLI=10.230.0.2 CTL=10.230.0.3
pids=()

cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "$NS_CLI" "$NS_GW" "$NS_CTL" "$NS_HUB"; do ip netns del "$n" 2>/dev/null || true; done
  if [ "$rc" = 0 ]; then
    rm -rf "$DIR"
    echo "demo: every step passed"
  else
    echo "demo: FAILED (exit $rc); logs are in $DIR" >&2
  fi
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
# (Background processes are started with ip netns exec directly, not through this function,
# so that $! is the process itself and cleanup can stop it.)
on() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
fail() { echo "demo: $*" >&2; exit 1; }
# wait_for FILE TEXT: until FILE contains TEXT (10 s).
wait_for() {
  for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  fail "$1 never showed \"$2\": $(tail -5 "$1" 2>/dev/null)"
}
# open_from_client HOST PORT: does a TCP connection from the client namespace open within 1 s?
open_from_client() { on "$NS_CLI" timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

step "1. three hosts: client $CLI, gateway $GW (with the key service on its loopback), controller $CTL"
ip netns add "$NS_HUB"
ip -n "$NS_HUB" link add br0 type bridge
ip -n "$NS_HUB" link set br0 up
i=0
for pair in "$NS_GW:$GW" "$NS_CLI:$CLI" "$NS_CTL:$CTL"; do
  ns=${pair%%:*} addr=${pair#*:}
  ip netns add "$ns"
  ip link add "kda$i$tag" type veth peer name "kdb$i$tag"
  ip link set "kda$i$tag" netns "$ns"
  ip link set "kdb$i$tag" netns "$NS_HUB"
  ip -n "$NS_HUB" link set "kdb$i$tag" master br0 up
  ip -n "$ns" link set "kda$i$tag" name eth0
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  i=$((i + 1))
done

step "2. the key service on the gateway host's loopback, and a key"
ip netns exec "$NS_GW" "$KAGI" server --dev --listen 127.0.0.1:7300 --data-dir "$DIR/kms" >"$DIR/kms.out" 2>"$DIR/kms.log" &
pids+=($!)
wait_for "$DIR/kms.out" KAGI_TOKEN
KAGI_TOKEN=$(sed -n 's/^export KAGI_TOKEN=//p' "$DIR/kms.out")
export KAGI_TOKEN
on "$NS_GW" env KAGI_ADDR=http://127.0.0.1:7300 "$KAGI" key create payroll >/dev/null

step "3. the controller: policy, one-time tokens, then it runs behind SPA"
for f in controller.toml gateway.toml; do sed "s|@DIR@|$DIR|g" "$here/$f" >"$DIR/$f"; done
ctl() { on "$NS_CTL" "$KAGI" controller --config "$DIR/controller.toml" "$@"; }
ctl set-policy "$here/policy.toml"
GW_TOKEN=$(ctl token gw1 --ttl 15m)
ALICE_TOKEN=$(ctl token alice --ttl 15m)
ip netns exec "$NS_CTL" "$KAGI" controller --config "$DIR/controller.toml" 2>"$DIR/controller.log" &
pids+=($!)
wait_for "$DIR/controller.log" "kagi controller listening"

step "4. the gateway enrolls with its token and starts (its TLS port hidden behind SPA)"
on "$NS_GW" "$KAGI" enroll --controller "$CTL:8444" --token "$GW_TOKEN" --dir "$DIR/gw1"
ip netns exec "$NS_GW" "$KAGI" gateway --config "$DIR/gateway.toml" 2>"$DIR/gateway.log" &
pids+=($!)
wait_for "$DIR/gateway.log" "perimeter state from the controller"

step "5. from the client, nothing answers: not the gateway, not the controller, not the key service"
for target in "$GW 8443" "$CTL 8444" "$GW 7300"; do
  # shellcheck disable=SC2086
  if open_from_client $target; then fail "port $target is open before SPA"; fi
  echo "closed: $target"
done

step "6. alice enrolls (knocking on the controller with her token's one-time key)"
on "$NS_CLI" "$KAGI" enroll --controller "$CTL:8444" --token "$ALICE_TOKEN" --dir "$DIR/alice"

step "7. kagi connect: SPA knock, mutual TLS, the key service on a local port"
ip netns exec "$NS_CLI" "$KAGI" connect kms --dir "$DIR/alice" --listen 127.0.0.1:7301 \
  --posture disk_encryption=true >"$DIR/connect.out" 2>"$DIR/connect.log" &
pids+=($!)
wait_for "$DIR/connect.out" "kagi connect"
on "$NS_CLI" env KAGI_ADDR=http://127.0.0.1:7301 "$KAGI" datakey generate payroll -o json \
  --justification CUSTOMER_INITIATED_ACCESS | tee "$DIR/datakey.json"
grep -q '"key": *"payroll"' "$DIR/datakey.json" || fail "no data key through the tunnel"

step "8. revoke alice at the controller: the gateway refuses her within a second"
ctl revoke alice
sleep 1.5
if on "$NS_CLI" env KAGI_ADDR=http://127.0.0.1:7301 "$KAGI" datakey generate payroll >/dev/null 2>&1; then
  fail "a revoked identity still reached the key service"
fi
echo "refused after revocation"

step "9. every decision is on the gateway's audit chain"
"$KAGI" audit verify --db "$DIR/gateway-audit.db"
