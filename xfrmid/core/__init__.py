"""The core: desired state, reference counting and plans. Never imports D-Bus."""
