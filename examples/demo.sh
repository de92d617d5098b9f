#!/bin/bash
# xfrmid demo (make demo runs it as root inside a throwaway VM).
#
# A private message bus with the project's D-Bus policy, the xfrmid daemon on
# it, then xfrmctl asking for ipsec1 on behalf of two connections in network
# namespace "west", an address and routes (one with --peer, the peer
# pattern), the kernel's view beside xfrmctl's, real ESP between "west" and
# "east" through the interfaces, both of west's connections detaching and
# ipsec1 going away with the last one, and finally the administrator's view:
# the daemon's status, what it manages (east's ipsec1) and its log lines.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
py=${PYTHON:-$top/.venv/bin/python}
[ -x "$py" ] || py=python3
work=$(mktemp -d /tmp/xfrmid-demo.XXXXXX)
chmod 755 "$work"
bus_pid= daemon_pid=

cleanup() {
    set +e
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    [ -n "$bus_pid" ] && kill "$bus_pid" 2>/dev/null
    ip netns del west 2>/dev/null
    ip netns del east 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }
xfrmctl() { "$py" -m xfrmid.cli.main --bus "$ADDR" "$@"; }

step "A private system-like bus that includes dbus/org.xfrmid1.conf"
# the same system-like configuration as the kernel tests; the socket is this run's
dbus-daemon --config-file="$top/tests/kernel/private-bus.conf" --address="unix:path=$work/bus" \
    --nofork --nopidfile --print-address=3 3>"$work/address" &
bus_pid=$!
for _ in $(seq 100); do [ -s "$work/address" ] && break; sleep 0.1; done
ADDR=$(cut -d, -f1 <"$work/address")
echo "bus: $ADDR"

step "Two network namespaces joined by a veth pair (west 192.1.2.45, east 192.1.2.23)"
ip netns add west
ip netns add east
ip -n west link set lo up
ip -n east link set lo up
ip -n west link add eth0 type veth peer name eth0 netns east
ip -n west addr add 192.1.2.45/24 dev eth0
ip -n east addr add 192.1.2.23/24 dev eth0
ip -n west link set eth0 up
ip -n east link set eth0 up

step "The daemon: probe, reconcile, then take org.xfrmid1"
show "$py" -m xfrmid.daemon --check-kernel
"$py" -m xfrmid.daemon --bus "$ADDR" --config "$work/none.conf" --state-dir "$work/state" \
    --log-level info 2>"$work/xfrmid.log" &
daemon_pid=$!
for _ in $(seq 600); do
    busctl --address="$ADDR" status org.xfrmid1 >/dev/null 2>&1 && break
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/xfrmid.log"; exit 1; }
    sleep 0.2
done
show busctl --address="$ADDR" get-property org.xfrmid1 /org/xfrmid1 org.xfrmid1.Manager Version KernelFeatures

step "Two connections attach to ipsec1 in west; east gets its own ipsec1"
show xfrmctl --netns west attach ipsec1 west-east
show xfrmctl --netns west attach ipsec1 west-east-peer
show xfrmctl --netns east attach ipsec1 east-west

step "An address and routes: one plain, one with --peer (table 50 + the peer pattern's rules)"
show xfrmctl --netns west address add ipsec1 west-east 10.0.1.1/32
show xfrmctl --netns west route add ipsec1 west-east 10.0.2.0/24 --src 10.0.1.1
show xfrmctl --netns west route add ipsec1 west-east-peer 192.1.2.23/32 --peer 192.1.2.23
show xfrmctl --netns east address add ipsec1 east-west 10.0.2.1/32
show xfrmctl --netns east route add ipsec1 east-west 10.0.1.0/24 --src 10.0.2.1

step "What the kernel has, beside what xfrmctl says"
show ip -n west -d link show ipsec1
show ip -n west rule
show ip -n west route show dev ipsec1
show ip -n west route show table 50
show xfrmctl --netns west status ipsec1
show xfrmctl list
echo "# IKE/ESP to the peer carry output mark 1 and skip table 50; everything else to it enters ipsec1:"
show ip -n west route get 192.1.2.23 mark 1
show ip -n west route get 192.1.2.23

step "SAs and policies with the if_id and output mark Attach returned (what pluto would install)"
read -r _ _ IF_ID _ MARK <<<"$(xfrmctl --netns west attach ipsec1 west-east)"
mark=${MARK%/*} mask=${MARK#*/}
sa() {  # ns local remote spi_out spi_in key_out key_in inner_local inner_remote
    ip -n "$1" xfrm state add src "$2" dst "$3" proto esp spi "$4" reqid 1 mode tunnel \
        aead 'rfc4106(gcm(aes))' "$6" 128 if_id "$IF_ID" output-mark "$mark" mask "$mask"
    ip -n "$1" xfrm state add src "$3" dst "$2" proto esp spi "$5" reqid 1 mode tunnel \
        aead 'rfc4106(gcm(aes))' "$7" 128 if_id "$IF_ID"
    ip -n "$1" xfrm policy add src "$8" dst "$9" dir out if_id "$IF_ID" \
        tmpl src "$2" dst "$3" proto esp reqid 1 mode tunnel
    for dir in in fwd; do
        ip -n "$1" xfrm policy add src "$9" dst "$8" dir "$dir" if_id "$IF_ID" \
            tmpl src "$3" dst "$2" proto esp reqid 1 mode tunnel
    done
}
k1=0x$(printf '11%.0s' $(seq 20)) k2=0x$(printf '22%.0s' $(seq 20))
sa west 192.1.2.45 192.1.2.23 0x1001 0x2002 "$k1" "$k2" 10.0.1.0/24 10.0.2.0/24
sa east 192.1.2.23 192.1.2.45 0x2002 0x1001 "$k2" "$k1" 10.0.2.0/24 10.0.1.0/24
echo "if_id $IF_ID, output mark $mark/$mask"

step "Real ESP: ping east's inner address from west's, through ipsec1"
show ip netns exec west ping -c 3 -W 5 -I 10.0.1.1 10.0.2.1
show ip -n west -s link show ipsec1
show ip -n east -s xfrm state list spi 0x1001

step "Both of west's connections detach; west's ipsec1 goes away with the last one"
show xfrmctl --netns west detach ipsec1 west-east
show xfrmctl --netns west status ipsec1
show xfrmctl --netns west detach ipsec1 west-east-peer
show ip -n west rule
if ip -n west link show ipsec1 >/dev/null 2>&1; then
    echo "ipsec1 is still there: the demo failed" >&2
    exit 1
fi
echo "ip -n west link show ipsec1: gone"

step "The administrator's view: the daemon, what it manages, what it logged"
# What `systemctl status xfrmid` would say, from the daemon itself over the bus.
show xfrmctl status
show xfrmctl list
show xfrmctl --netns east status ipsec1
echo "# the daemon's log lines of this run (under systemd: journalctl -u xfrmid, with"
echo "# INTERFACE=, IF_ID=, NETNS= fields on each action):"
cat "$work/xfrmid.log"
echo
echo "demo finished"
