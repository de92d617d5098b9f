"""xfrmid.journal: structured fields to journald, readable lines on stderr."""

from __future__ import annotations

import io
import logging

import pytest

from xfrmid import journal
from xfrmid.errors import InvalidArgument


@pytest.fixture(autouse=True)
def _restore_logger():
    logger = logging.getLogger(journal.LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def test_journal_fields():
    sent = []
    log = journal.setup("debug", "journal", journal_sender=lambda message, /, **kw: sent.append((message, kw)))
    log.getChild("core").info(
        "Created %s", "ipsec1", extra=journal.fields(interface="ipsec1", if_id=1, owner="conn-a")
    )
    message, kw = sent[0]
    assert message == "Created ipsec1"
    assert kw["INTERFACE"] == "ipsec1" and kw["IF_ID"] == 1 and kw["OWNER"] == "conn-a"
    assert "NETNS" not in kw
    assert kw["SYSLOG_IDENTIFIER"] == "xfrmid"
    assert kw["PRIORITY"] == "6"
    assert journal.uses_journal()


def test_journal_handler_really_sends(monkeypatch, capsys):
    """The journal target hands each record to systemd.journal.send itself (recorded on
    its way there, not replaced), fields included; without a journald (as here, unless
    the host runs one) that is silent: nothing raised, no logging error reported."""
    from systemd import journal as systemd_journal

    sent = []
    real_send = systemd_journal.send

    def recording(message, /, **kw):
        sent.append((message, kw))
        return real_send(message, **kw)

    monkeypatch.setattr(systemd_journal, "send", recording)
    journal.setup("info", "journal")
    assert journal.uses_journal()
    logging.getLogger("xfrmid").error("no journald here", extra=journal.fields(netns="blue"))
    ((message, kw),) = sent
    assert message == "no journald here"
    assert kw["NETNS"] == "blue" and kw["PRIORITY"] == "3" and kw["SYSLOG_IDENTIFIER"] == "xfrmid"
    assert "Logging error" not in capsys.readouterr().err


def test_stderr_line_has_fields():
    stream = io.StringIO()
    log = journal.setup("info", "stderr", stream=stream)
    log.info("Attached %s", "conn", extra=journal.fields(interface="ipsec7", if_id=7, netns="blue"))
    log.debug("hidden")
    line = stream.getvalue()
    assert "INFO Attached conn [interface=ipsec7 if_id=7 netns=blue]" in line
    assert "hidden" not in line
    assert not journal.uses_journal()


def test_setup_twice_keeps_one_handler():
    stream = io.StringIO()
    journal.setup("info", "stderr", stream=stream)
    journal.setup("info", "stderr", stream=stream)
    logging.getLogger("xfrmid").warning("once")
    assert stream.getvalue().count("once") == 1


def test_set_level_and_notice():
    stream = io.StringIO()
    log = journal.setup("warning", "stderr", stream=stream)
    log.info("quiet")
    journal.set_level("NOTICE")
    log.log(journal.LEVELS["notice"], "loud")
    assert "quiet" not in stream.getvalue() and "NOTICE loud" in stream.getvalue()


@pytest.mark.parametrize("bad", ["verbose", "", None, 10])
def test_bad_level(bad):
    with pytest.raises(InvalidArgument, match="Log level"):
        journal.parse_level(bad)


def test_bad_target():
    with pytest.raises(InvalidArgument, match="Log target 'syslog'"):
        journal.setup("info", "syslog")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_auto_detection(monkeypatch):
    monkeypatch.setattr(journal.os.path, "exists", lambda p: p == journal.JOURNAL_SOCKET)
    assert journal.journal_wanted({"JOURNAL_STREAM": "8:1234"}, _Tty())
    assert not journal.journal_wanted({}, _Tty())  # an admin's terminal
    assert journal.journal_wanted({}, io.StringIO())  # a pipe, journald listening
    monkeypatch.setattr(journal.os.path, "exists", lambda p: False)
    assert not journal.journal_wanted({}, io.StringIO())
