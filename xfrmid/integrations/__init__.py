"""Programs that plug xfrmid into other software: libreswan's updown hook, NetworkManager's VPN plugin."""
