#!/bin/bash
# Runs inside a systemd-nspawn container booted with systemd as PID 1 (see
# tests/kernel/test_service_unit.py): drives xfrmid.service as installed,
# through D-Bus activation, systemctl and busctl (quick under emulation, unlike
# a Python client), and writes what it saw to /out: facts (key=value lines)
# and raw outputs.
exec >/out/check.log 2>&1
set -x
start=$(date +%s)
fact() { echo "$1=$2" >>/out/facts; }
step() { fact "t_$1" "$(( $(date +%s) - start ))"; }
show() { systemctl show xfrmid.service -p "$1" --value; }
manager() { busctl --timeout=600 call org.xfrmid1 /org/xfrmid1 org.xfrmid1.Manager "$@"; }
dump() {  # what an administrator would look at: status and the unit's journal
    systemctl status xfrmid.service --no-pager -l >/out/status.txt 2>&1
    journalctl -b -u xfrmid.service --no-pager -o cat >/out/journal.txt 2>&1
}
trap dump EXIT  # also when a step below fails or hangs up to the container's end
wait_state() {  # wait until ActiveState is $1 (at most 10 min)
    for _ in $(seq 1 1200); do [ "$(show ActiveState)" = "$1" ] && return 0; sleep 0.5; done
    return 1
}
wait_log() {  # wait until the unit's journal contains $1 (at most 5 min)
    for _ in $(seq 1 600); do journalctl -b -u xfrmid.service -o cat | grep -qF -- "$1" && return 0; sleep 0.5; done
    return 1
}
: >/out/facts
step boot
fact before_activation "$(show ActiveState)"

# D-Bus activation: the first call starts xfrmid.service through systemd, by the
# alias (dbus-org.xfrmid1.service) the administrator's enable creates.
systemctl enable xfrmid.service >/out/enable.txt 2>&1
fact enable_rc $?
fact alias "$(readlink /etc/systemd/system/dbus-org.xfrmid1.service)"
manager ListInterfaces >/out/activation.txt 2>&1
fact activation_rc $?
wait_state active || { fact activation_failed "$(show ActiveState)/$(show Result)"; dump; }
step activated
fact active "$(show ActiveState)/$(show SubState)"
fact type "$(show Type)"
fact status "$(show StatusText)"
fact main_pid_nonzero "$([ "$(show MainPID)" -gt 0 ] && echo yes || echo no)"
grep -E '^(Cap(Bnd|Eff)|NoNewPrivs|Seccomp):' /proc/"$(show MainPID)"/status >/out/caps.txt

# Interfaces through the sandboxed daemon, in its own namespace and in one
# created after it started (setns, and /run/netns reaching its mount namespace).
manager CreateInterface 'sua{sv}' ipsec731 0 1 addresses as 1 192.0.2.31/32 >/out/create.txt 2>&1
fact create_rc $?
ip netns add xfrmid-unit-blue
manager CreateInterface 'sua{sv}' ipsec732 0 1 netns s xfrmid-unit-blue >/out/create_netns.txt 2>&1
fact create_netns_rc $?
fact netns_link "$(ip -n xfrmid-unit-blue -br link show ipsec732 | awk '{print $1}')"
fact state_file "$([ -s /run/xfrmid/state.json ] && echo yes || echo no)"
manager ListInterfaces >/out/list.txt 2>&1
step created

# Watchdog: WatchdogSec=30s, pings from the event loop since READY=1.
fact watchdog_usec "$(show WatchdogUSec)"
fact watchdog_seen "$([ "$(show WatchdogTimestampMonotonic)" != 0 ] && echo yes || echo no)"

# Reload: the current file, then a file with a typo (refused, daemon kept).
pid=$(show MainPID)
systemctl reload xfrmid.service; fact reload_rc $?
wait_log "configuration reloaded"; fact reload_logged $?
mkdir -p /etc/xfrmid
printf '[daemon]\nlog_level = "info"\n\n[[interface]]\nname = "ipsec733"\nmtuu = 1400\n' >/etc/xfrmid/xfrmid.conf
systemctl reload xfrmid.service; fact bad_reload_rc $?
wait_log "keeping the previous configuration"; fact bad_reload_logged $?
fact bad_reload_active "$(show ActiveState)"
fact same_pid_after_reloads "$([ "$(show MainPID)" = "$pid" ] && echo yes || echo no)"
rm -f /etc/xfrmid/xfrmid.conf
step reloaded

# Stop: a clean exit. RuntimeDirectoryPreserve=yes keeps /run/xfrmid, so the
# next start (a restart, an upgrade) finds the desired state; checking the
# file saves a second start, which takes minutes under emulation.
manager DeleteInterface 'sa{sv}' ipsec732 1 netns s xfrmid-unit-blue >/out/delete.txt 2>&1; fact delete_rc $?
ip netns del xfrmid-unit-blue
systemctl stop xfrmid.service
fact stop_result "$(show Result)"
fact state_kept "$(grep -rqs '"ipsec731"' /run/xfrmid/ && echo yes || echo no)"
cp /run/xfrmid/state.json /out/state.json
ip link del ipsec731
step stopped

# Disabled, xfrmid is no longer started by a call on the bus.
systemctl disable xfrmid.service >/out/disable.txt 2>&1
fact disable_rc $?
manager ListInterfaces >/out/disabled_activation.txt 2>&1
fact disabled_activation_rc $?
fact disabled_state "$(show ActiveState)"
dump
journalctl -b -u xfrmid.service --no-pager -o json >/out/journal.json
echo done >>/out/facts
