"""xfrmctl, the administrator's client of xfrmid over D-Bus."""
