"""Fuzzing the running daemon over the bus: random argument sets across all methods, and
calls whose signature is not the method's.

Every reply must be a success or one of the contract's error names (a wrong
signature: the bus library's UnknownMethod), never an internal error, and the
daemon must log no internal error and still answer afterwards. One daemon, one
connection, many calls; interface names stay within ipsec250..ipsec257 so the
kernel side is bounded, and whatever the fuzzer created is removed at the end.
Each run draws a new seed and prints it; XFRMID_FUZZ_SEED=N replays run N.
"""

from __future__ import annotations

import asyncio
import os
import random
import string

from .bus_fixtures import ip_json, private_bus, xfrmid  # noqa: F401 - fixtures
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from xfrmid.client import Client

CALLS = 2200
CONTRACT_ERRORS = {
    "org.xfrmid1.Error.InvalidArgument", "org.xfrmid1.Error.NotFound", "org.xfrmid1.Error.Conflict",
    "org.xfrmid1.Error.Busy", "org.xfrmid1.Error.NotOwned", "org.xfrmid1.Error.KernelUnsupported",
    "org.xfrmid1.Error.Failed", "org.freedesktop.DBus.Error.AccessDenied",
}
# a call whose signature is not the method's never reaches xfrmid's code
WRONG_SIGNATURE_ERRORS = {"org.freedesktop.DBus.Error.UnknownMethod", "org.freedesktop.DBus.Error.InvalidArgs"}
INTERNAL = ("failed unexpectedly", "Traceback")  # what the daemon says of a bug (errormap.py)
SIGNATURES = {
    "CreateInterface": "sua{sv}", "DeleteInterface": "sa{sv}", "Attach": "ssa{sv}", "Detach": "ssa{sv}",
    "AddAddress": "sssa{sv}", "RemoveAddress": "sssa{sv}", "AddRoute": "sssa{sv}", "RemoveRoute": "sssa{sv}",
    "CreateInterfaces": "a(sua{sv})a{sv}", "DeleteInterfaces": "asa{sv}",
    "ListInterfaces": "", "Reconcile": "", "Reload": "",
}
OPTION_KEYS = ["netns", "link", "mtu", "external", "addresses", "force", "bind_to_caller", "table", "src",
               "metric", "peer", "colour", ""]
SEED = int(os.environ.get("XFRMID_FUZZ_SEED") or random.SystemRandom().randrange(2**32))

# D-Bus strings cannot carry NUL (the library refuses to send them)
text = st.text(alphabet=st.characters(codec="utf-8", blacklist_characters="\x00"), max_size=40)
names = st.one_of(
    st.sampled_from([f"ipsec{n}" for n in range(250, 258)]),
    st.sampled_from(["", "ipsec", "ipsec01", "lo", "eth0", "x" * 16, "a/b", "a b", "ipsec4294967296"]),
    st.text(string.printable, max_size=20),
)
owners = st.one_of(st.sampled_from(["pluto-a", "pluto-b", "nm-1"]), text,
                   st.text(alphabet=st.characters(codec="utf-8", blacklist_characters="\x00"), min_size=250, max_size=300))
addresses = st.one_of(
    st.sampled_from(["10.250.0.1/24", "10.250.0.2/32", "fd00:250::1/64", "0.0.0.0/0", "::/0", "10.251.0.0/16",
                     "192.0.2.0/24", "fe80::/10", "224.0.0.0/4", "10.250.0.1", "999.1.1.1/8", "10.0.0.1/33"]),
    st.ip_addresses().map(str),
    text,
)
u32 = st.one_of(st.sampled_from([0, 1, 50, 68, 1280, 1400, 9000, 65535, 65536, 254, 255, 0xFFFFFFFF]),
                st.integers(0, 0xFFFFFFFF))
variants = st.one_of(
    st.builds(Variant, st.just("s"), st.one_of(addresses, st.sampled_from(["", "lo", "nonexistent-ns"]))),
    st.builds(Variant, st.just("u"), u32),
    st.builds(Variant, st.just("b"), st.booleans()),
    st.builds(Variant, st.just("as"), st.lists(addresses, max_size=3)),
    st.builds(Variant, st.just("i"), st.integers(-(2**31), 2**31 - 1)),
)
options = st.dictionaries(st.sampled_from(OPTION_KEYS), variants, max_size=3)


def draw_value(draw, ch: str, i: int, method: str):
    """One argument of signature character ``ch`` (``D`` = a{sv}, ``E`` = a(sua{sv})) at position ``i``."""
    if ch == "D":
        return draw(options)
    if ch == "E":
        return draw(st.lists(st.tuples(names, u32, options).map(list), max_size=4))
    if ch == "A":
        return draw(st.lists(names, max_size=4))
    if ch == "u":
        return draw(u32)
    if ch == "i":
        return draw(st.integers(-(2**31), 2**31 - 1))
    if ch == "b":
        return draw(st.booleans())
    if ch == "v":
        return draw(variants)
    if i == 0:
        return draw(names)
    if i == 1 and method != "CreateInterface":
        return draw(owners)
    return draw(addresses)


_CODES = {"a(sua{sv})": "E", "a{sv}": "D", "as": "A"}  # in this order: the first holds the second


def _codes(sig: str) -> str:
    for long, code in _CODES.items():
        sig = sig.replace(long, code)
    return sig


# signatures a confused or hostile client may send instead of a method's own
WRONG = ["", "s", "u", "i", "b", "v", "ss", "su", "us", "sss", "ssss", "as", "a{sv}", "sa{sv}u", "ssa{sv}s",
         "sua{sv}a{sv}", "asa{sv}a{sv}", "ua{sv}", "sia{sv}", "sba{sv}"]


@st.composite
def calls(draw):
    method = draw(st.sampled_from(sorted(SIGNATURES)))
    sig = SIGNATURES[method]
    if draw(st.integers(0, 9)) == 0:  # one call in ten with a signature the method does not take
        sig = draw(st.sampled_from([w for w in WRONG if w != sig]))
    body = [draw_value(draw, ch, i, method) for i, ch in enumerate(_codes(sig))]
    return method, sig, body


def test_fuzz_every_reply_is_success_or_a_contract_error(xfrmid):
    print(f"fuzz seed {SEED} (XFRMID_FUZZ_SEED={SEED} replays this run)")
    loop = asyncio.new_event_loop()

    async def connect() -> MessageBus:  # dbus-fast binds the bus to the running loop
        return await MessageBus(bus_address=xfrmid.address).connect()

    bus = loop.run_until_complete(connect())
    seen: dict[str, int] = {}
    unexpected: list = []
    log_before = len(xfrmid.log_text())

    async def call(method: str, sig: str, body: list) -> Message:
        return await asyncio.wait_for(bus.call(Message(
            destination="org.xfrmid1", path="/org/xfrmid1", interface="org.xfrmid1.Manager",
            member=method, signature=sig, body=body)), 60)

    @seed(SEED)
    @settings(max_examples=CALLS, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(calls())
    def one(case):
        method, sig, body = case
        reply = loop.run_until_complete(call(method, sig, body))
        key = "ok" if reply.message_type == MessageType.METHOD_RETURN else reply.error_name
        seen[key] = seen.get(key, 0) + 1
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            allowed = CONTRACT_ERRORS if sig == SIGNATURES[method] else WRONG_SIGNATURE_ERRORS
            if (reply.error_name not in allowed or any(word in text for word in INTERNAL)
                    or "\n" in text.strip()):
                unexpected.append((method, sig, body, reply.error_name, text))
        elif sig != SIGNATURES[method]:
            unexpected.append((method, sig, body, "succeeded with a signature it does not take"))

    existing = {(i.name, i.netns) for i in loop.run_until_complete(Client(bus).list_interfaces())}
    try:
        one()
        print("fuzz replies:", seen)
        assert sum(seen.values()) >= 2000, (SEED, seen)
        assert not unexpected, (SEED, unexpected[:5])
        logged = [line for line in xfrmid.log_text()[log_before:].splitlines()
                  if any(word in line for word in INTERNAL)]
        assert not logged, (SEED, logged[:10])
        # the fuzzer reached real work too, and the bus library's refusals
        assert seen.get("ok", 0) >= 10 and seen.get("org.freedesktop.DBus.Error.UnknownMethod", 0) >= 10, (SEED, seen)
        # still answering, and clean up what the fuzzer made
        client = Client(bus)
        for entry in loop.run_until_complete(client.list_interfaces()):
            if (entry.name, entry.netns) not in existing:
                props = loop.run_until_complete(client.interface_properties(entry.name, entry.netns or None))
                for owner in props["Owners"]:
                    loop.run_until_complete(client.detach(entry.name, owner, netns=entry.netns or None))
                if props["Owned"] and entry.name in {
                        i.name for i in loop.run_until_complete(client.list_interfaces())}:
                    loop.run_until_complete(client.delete_interface(entry.name, netns=entry.netns or None, force=True))
        left = [i.name for i in loop.run_until_complete(client.list_interfaces()) if (i.name, i.netns) not in existing]
        assert left == [], SEED
        assert not [x for x in ip_json("link", "show") if x["ifname"].startswith("ipsec25")], SEED
        assert xfrmid.alive()
    finally:
        bus.disconnect()
        loop.close()
