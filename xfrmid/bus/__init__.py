"""The D-Bus edge of xfrmid: a thin adapter from org.xfrmid1 to the core Manager.

Nothing here decides policy; it names objects, checks callers and option
dictionaries, maps errors (in one place) and forwards to the core.
"""
