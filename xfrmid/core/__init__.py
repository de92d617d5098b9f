"""The core: desired state, reference counting and plans. Never imports D-Bus.

- ``manager``: the public API (Manager), locks, listeners;
- ``desired``: the refcounted desired state (pure) and its JSON form;
- ``routes_policy``: route requests -> kernel routes/rules (default split, peer pattern);
- ``plan``: desired state + kernel dump -> actions (pure reconcile);
- ``apply``: kernel snapshots and running actions; ``sync``: per-call and full reconcile;
- ``interfaces``: create-or-adopt decisions for new interfaces; ``info``: InterfaceInfo views;
- ``store``: the atomic state file; ``gate``: per-interface locks and the reconcile gate;
- ``views``: what adapters see; ``watch``: netlink events -> debounced reconcile.
"""
