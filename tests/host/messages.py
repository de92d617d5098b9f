"""Shared check for the house rule on error messages: one sentence naming the value."""

from __future__ import annotations

import pytest

from xfrmid.errors import InvalidArgument, XfrmidError, show


def _forms(value: object) -> list[str]:
    forms = [show(value)]
    try:
        forms.append(str(value))
    except ValueError:  # ints too long for str(); show() gives them in hex
        pass
    return forms


def assert_one_sentence(error: XfrmidError, *values: object) -> None:
    """The message is one line, one sentence ending in '.', and shows one of ``values``.

    A value counts as shown by its repr (xfrmid.errors.show) or its str(), so
    both "if_id 0 ..." and "Interface name 'a b' ..." qualify.
    """
    message = str(error)
    assert message == error.message
    assert message and "\n" not in message and "\r" not in message, message
    assert message.endswith("."), message
    shown = [text for v in values for text in _forms(v) if text and text in message]
    assert shown, f"{message!r} names none of {values!r}"
    rest = message
    for text in sorted(shown, key=len, reverse=True):
        rest = rest.replace(text, "<value>")
    # One sentence: no full stop followed by more words outside the quoted value.
    assert ". " not in rest[:-1], message


def refused(call, *args, values: tuple = (), error: type[XfrmidError] = InvalidArgument,
            match: str | None = None) -> XfrmidError:
    """call(*args) must raise ``error`` with one sentence naming one of ``values`` (default: args)."""
    with pytest.raises(error, match=match) as info:
        call(*args)
    assert type(info.value) is error
    assert_one_sentence(info.value, *(values or args))
    return info.value


def accepted_or_refused(ok: bool, expected: object, call, *args, values: tuple = ()) -> None:
    """call(*args) returns ``expected`` when ``ok``, else is refused with InvalidArgument."""
    if ok:
        assert call(*args) == expected
    else:
        refused(call, *args, values=values)
