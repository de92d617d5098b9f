"""Names, if_ids and marks (xfrmid.naming), driven by hypothesis.

The reference model below restates the rules independently of the code:
the kernel's dev_valid_name() (net/core/dev.c) with its Latin-1 isspace()
(lib/ctype.c: \\t \\n \\v \\f \\r space and byte 0xa0), the sysctl names
"all"/"default" the kernel refuses, IFNAMSIZ counted in bytes, and xfrmid's
own additions ('%', non-printable characters, ipsec<N> and if_id rules).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from messages import accepted_or_refused, refused
from xfrmid.errors import Conflict
from xfrmid.naming import (
    DEFAULT_MARK_MASK,
    IF_ID_MAX,
    IPSEC0_IF_ID,
    Identity,
    NamePolicy,
    check_if_id,
    check_ifname,
    check_mask,
    check_u32,
    check_unique,
    default_name,
    derived_if_id,
    output_mark,
    resolve,
)

FAST = settings(max_examples=200, deadline=None)
U32 = 0xFFFFFFFF

# --- the reference model -------------------------------------------------------------

KERNEL_SPACE = set(b"\t\n\v\f\r \xa0")


def kernel_accepts(name: str) -> bool:
    """What a 6.x kernel does with IFLA_IFNAME (checked against 6.18 with veth links)."""
    raw = name.encode()
    if not raw or len(raw) >= 16 or raw in (b".", b".."):
        return False
    if raw in (b"all", b"default"):
        return False
    return not any(b in b"/:" or b in KERNEL_SPACE for b in raw)


def model_ifname_ok(name: object) -> bool:
    if not isinstance(name, str):
        return False
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    # xfrmid refuses '%' (kernel name template) and non-printable characters on top.
    return kernel_accepts(name) and "%" not in name and name.isprintable()


def model_implied(name: str) -> int | None:
    match = re.fullmatch(r"ipsec(0|[1-9][0-9]*)", name)
    if not match:
        return None
    n = int(match.group(1))
    if n == 0:
        return IPSEC0_IF_ID
    return None if n == IPSEC0_IF_ID or n > U32 else n


def model_resolve(name, if_id, policy) -> int | None:
    """The if_id resolve() must return, or None if it must refuse."""
    if not model_ifname_ok(name) or not is_u32(if_id):
        return None
    implied = model_implied(name)
    if implied is None:
        if re.fullmatch(r"ipsec[0-9]+", name) or not policy.any_name or if_id == 0:
            return None
        final = if_id
    elif if_id in (0, implied):
        final = implied
    else:
        return None
    mask = policy.mark_mask
    if not is_u32(mask) or mask == 0 or final & ~mask & U32:
        return None
    return final


def is_u32(value: object) -> bool:
    return type(value) is int and 0 <= value <= U32


# --- strategies ----------------------------------------------------------------------

SPECIAL = list("/:% .\t\n\v\f\r\x00\x01\x1b\x7f\xa0\x85àéŠßĠ€😀") + ["\u2000", "\u200b", "\u2028"]
name_chars = st.one_of(
    st.sampled_from("abcxyz019-_ipsec"), st.sampled_from(SPECIAL), st.characters()
)
ipsec_names = st.one_of(
    st.integers(0, 2**34).map(lambda n: f"ipsec{n}"),
    st.integers(0, 99).map(lambda n: f"ipsec0{n}"),
    st.sampled_from(["ipsec0", "ipsec1", "ipsec16384", "ipsec4294967295", "ipsec4294967296", "ipsec"]),
)
text_names = st.one_of(
    st.text(name_chars, max_size=20),
    st.text(st.sampled_from("aé€😀"), min_size=3, max_size=17),  # bytes vs characters
    st.text(min_size=15, max_size=300),
    st.sampled_from([".", "..", "all", "default", "ALL", "eth%d", "a%b", "vpn0", "x" * 15, "x" * 16]),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
)
names = st.one_of(ipsec_names, text_names)
any_values = st.one_of(
    st.none(), st.booleans(), st.floats(), st.binary(max_size=5), st.text(max_size=5),
    st.integers(-(2**70), 2**70), st.lists(st.integers(), max_size=2),
)
if_ids = st.one_of(
    st.integers(0, U32),
    st.sampled_from([-1, 0, 1, IPSEC0_IF_ID, U32, U32 + 1, True, False, 1.0, "5", None]),
    any_values,
)
masks = st.one_of(
    st.integers(0, U32),
    st.sampled_from([0, 1, 0xFF, 0xFFFF, 0xFFFF0000, 0x80000000, U32, U32 + 1, -1, True]),
    any_values,
)
policies = st.builds(NamePolicy, any_name=st.booleans(), mark_mask=masks)


# --- interface names -----------------------------------------------------------------

@FAST
@given(names)
@example("à")
@example("é")
@example("ßßßßßßßa")
@example("ßßßßßßßß")
@example("a\x00")
def test_check_ifname_matches_the_model(name):
    accepted_or_refused(model_ifname_ok(name), name, check_ifname, name)


@FAST
@given(any_values)
def test_check_ifname_refuses_non_strings(value):
    assume(not isinstance(value, str))
    refused(check_ifname, value)


# Seen on a real kernel (6.18, `ip link add NAME type veth`): accepted or EINVAL.
@pytest.mark.parametrize(
    "name, ok",
    [
        ("ipsec0", True), ("é", True), ("ipsé", True), ("123", True), ("ßßßßßßßa", True),
        ("x" * 15, True), ("a-b_c.d@e", True),
        ("à", False),  # UTF-8 c3 a0: the kernel's isspace(0xa0)
        ("\u00a0", False), ("ab:c", False), ("a/b", False), ("a b", False), ("a\tb", False),
        ("a\vb", False), ("ßßßßßßßß", False), ("x" * 16, False), ("", False), (".", False),
        ("..", False), ("all", False), ("default", False),
        ("a%b", False),  # kernel: EINVAL
        ("a%d", False),  # kernel: a template, silently named "a0"; xfrmid refuses '%'
        ("a\x01b", False), ("a\x7fb", False), ("a\x85b", False),  # kernel takes them; xfrmid does not
    ],
)
def test_check_ifname_known_cases(name, ok):
    accepted_or_refused(ok, name, check_ifname, name)


def test_check_ifname_counts_bytes_not_characters():
    refused(check_ifname, "é" * 8, match="16 bytes")  # 8 characters, 16 bytes
    assert check_ifname("é" * 7 + "e") == "é" * 7 + "e"  # 15 bytes


def test_check_ifname_explains_percent_and_a0():
    refused(check_ifname, "eth%d", match="template")
    refused(check_ifname, "và", match="0xa0")


# --- if_ids, masks, marks ------------------------------------------------------------

@FAST
@given(if_ids)
@example(10**5000)
def test_check_u32(value):
    accepted_or_refused(is_u32(value), value, check_u32, "Table", value, values=(value,))
    if not is_u32(value):
        assert str(refused(check_u32, "Table", value, values=(value,))).startswith("Table ")


@FAST
@given(if_ids)
def test_check_if_id(value):
    accepted_or_refused(is_u32(value) and value >= 1, value, check_if_id, value)


@FAST
@given(masks)
def test_check_mask(value):
    accepted_or_refused(is_u32(value) and value != 0, value, check_mask, value)


@FAST
@given(if_ids, masks)
@example(1, 0xFFFF0000)
@example(0x10000, 0xFFFF0000)
@example(U32, U32)
@example(0x80000000, 0x80000000)
def test_output_mark(if_id, mask):
    ok = is_u32(if_id) and if_id >= 1 and is_u32(mask) and mask and not if_id & ~mask & U32
    accepted_or_refused(ok, (if_id, mask), output_mark, if_id, mask)


def test_output_mark_default_mask_takes_every_if_id():
    assert output_mark(1) == (1, DEFAULT_MARK_MASK)
    assert output_mark(U32) == (U32, DEFAULT_MARK_MASK)


# --- resolve ---------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(names, if_ids, policies)
@example("ipsec0", 0, NamePolicy())
@example("ipsec0", IPSEC0_IF_ID, NamePolicy())
@example("ipsec16384", 0, NamePolicy())
@example("ipsec16384", IPSEC0_IF_ID, NamePolicy(any_name=True))
@example("ipsec01", 1, NamePolicy(any_name=True))
@example("vpn0", 0, NamePolicy(any_name=True))
@example("vpn0", 7, NamePolicy(any_name=False))
@example("ipsec5", 6, NamePolicy())
@example("ipsec1", 0, NamePolicy(mark_mask=0xFFFF0000))
@example("ipsec1", True, NamePolicy())
def test_resolve(name, if_id, policy):
    expected = model_resolve(name, if_id, policy)
    if expected is None:
        refused(resolve, name, if_id, policy, values=(name, if_id, policy.mark_mask))
        return
    identity = resolve(name, if_id, policy)
    assert identity == Identity(name=name, if_id=expected, mark=expected, mask=policy.mark_mask)
    assert 1 <= identity.if_id <= IF_ID_MAX
    assert check_ifname(identity.name) == name
    assert identity.mark == identity.if_id
    assert identity.if_id & ~identity.mask & U32 == 0


@FAST
@given(st.integers(0, U32))
def test_ipsec_names_round_trip(n):
    assume(n != IPSEC0_IF_ID)
    name = f"ipsec{n}"
    identity = resolve(name)
    assert identity.if_id == (n or IPSEC0_IF_ID)
    assert derived_if_id(name) == identity.if_id
    assert default_name(identity.if_id) == name
    assert resolve(name, identity.if_id) == identity


@FAST
@given(st.integers(1, U32))
def test_default_name_round_trip(if_id):
    name = default_name(if_id)
    assert resolve(name).if_id == if_id
    assert len(name.encode()) <= 15


def test_ipsec0_is_16384_both_ways():
    assert resolve("ipsec0").if_id == IPSEC0_IF_ID == 16384
    assert default_name(16384) == "ipsec0"


@pytest.mark.parametrize("name", ["ipsec16384", "ipsec01", "ipsec00", "ipsec4294967296"])
@pytest.mark.parametrize("any_name", [False, True])
def test_non_canonical_ipsec_names_are_refused(name, any_name):
    assert derived_if_id(name) is None
    refused(resolve, name, 5, NamePolicy(any_name=any_name), values=(name,))


@FAST
@given(any_values)
def test_derived_if_id_takes_anything(value):
    assert derived_if_id(value) is None or isinstance(value, str)


@FAST
@given(if_ids)
def test_default_name_refuses_bad_if_ids(if_id):
    assume(not (is_u32(if_id) and if_id >= 1))
    refused(default_name, if_id)


def test_other_names_need_the_policy_and_an_if_id():
    refused(resolve, "vpn0", 7, match="any_name")
    refused(resolve, "vpn0", 0, NamePolicy(any_name=True), values=("vpn0",), match="explicit if_id")
    assert resolve("vpn0", 7, NamePolicy(any_name=True)) == Identity("vpn0", 7, 7, U32)


# --- uniqueness within a namespace ---------------------------------------------------

valid_ipsec = st.integers(1, 2000).map(lambda n: f"ipsec{n}")
existing_maps = st.dictionaries(
    st.one_of(valid_ipsec, st.sampled_from(["vpn0", "vpn1", "ipsec0"])), st.integers(1, 2000), max_size=6
)


@FAST
@given(st.one_of(valid_ipsec, st.just("ipsec0")), existing_maps)
def test_check_unique(name, existing):
    identity = resolve(name)
    name_clash = name in existing and existing[name] != identity.if_id
    id_clash = any(other != name and v == identity.if_id for other, v in existing.items())
    if not (name_clash or id_clash):
        assert check_unique(identity, existing) is None
        return
    refused(check_unique, identity, existing, values=(name, identity.if_id), error=Conflict)


def test_check_unique_examples():
    ipsec1 = resolve("ipsec1")
    check_unique(ipsec1, {})
    check_unique(ipsec1, {"ipsec1": 1, "ipsec2": 2})  # the same interface again: fine
    refused(check_unique, ipsec1, {"ipsec1": 9}, values=("ipsec1",), error=Conflict,
            match="already exists with if_id 9")
    refused(check_unique, ipsec1, {"vpn0": 1}, values=(1,), error=Conflict,
            match="already used by interface 'vpn0'")
