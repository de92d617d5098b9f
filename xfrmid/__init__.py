"""xfrmid: the system daemon that owns Linux XFRM interfaces."""

__version__ = "0.1.0"
