"""The core: desired state, reference counting, plans and drift repair. Never imports D-Bus,
and of the kernel layer only its plain values (``kernel.objects``, ``kernel.events``);
the kernel itself comes in as a ``KernelBackend``.

Built by ``running.build_core`` (the composition root: the daemon and the test
fixtures use it). Each module owns one thing:

- ``manager``: the public API (Manager): argument checks, locks, lifecycle;
- ``transaction``: one change, all or nothing (save, change, persist, apply, undo, publish);
- ``reconcile``: the kernel made to match, for some interfaces or everywhere;
- ``state``: the settings and desired state in force, and what follows from both;
- ``desired``: one interface's desired state (pure): its holders, what they hold, its JSON form;
- ``desired_state``: every interface's, with its indexes, mutations and a call's save points;
- ``holdings`` (+ ``sorted_items``): what a shared interface's owners hold, counted, and its
  sorted lists; ``changes``: what one call changed of one interface;
- ``seen``: what the kernel was last seen to hold per interface;
- ``publish``: the listeners and the views last published to them;
- ``views``: what adapters see of an interface (InterfaceInfo) and the listener protocol;
- ``interfaces``: create-or-adopt decisions, CreateInterface's checks, configured interfaces;
- ``routes_policy``: route requests -> kernel routes/rules (default split, peer pattern);
- ``route_slots``: which interface holds each kernel route slot;
- ``plan``: desired state + kernel view -> actions (pure); ``apply``: kernel reads and actions run;
- ``store`` (+ ``store_image``, ``append_file``): the state file, snapshot plus journal;
- ``gate``: where calls wait (interface locks, the reconcile gate); ``call_queue``: the calls
  queued on one interface, those queued together run as one transaction; ``timers``: linger timers;
- ``guard``: the drift guard protocol; ``watch`` (+ ``drift``): netlink events -> debounced repair;
- ``running``: the composition root (the manager and its watcher, wired).
"""
