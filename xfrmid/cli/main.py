"""xfrmctl: entry point, one small function per command.

Errors end up here and become one sentence on stderr plus the exit code of
their class (xfrmid.cli.exitcodes); a traceback never reaches the user.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from ..client import Client
from ..errors import XfrmidError
from . import exitcodes, show
from .parser import build_parser


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


async def _interfaces(client: Client) -> list[dict[str, Any]]:
    objects = await client.managed_objects()
    return sorted(
        ({"path": path, **props} for path, props in objects.items()),
        key=lambda o: (o["Netns"], o["Name"]),
    )


async def cmd_list(client: Client, args: argparse.Namespace) -> int:
    objects = await _interfaces(client)
    if args.netns is not None:
        objects = [o for o in objects if o["Netns"] == args.netns]
    if args.json:
        _print_json(objects)
    else:
        print(show.interface_list(objects))
    return exitcodes.OK


async def cmd_status(client: Client, args: argparse.Namespace) -> int:
    if args.name is None:
        return await _daemon_status(client, args)
    props = await client.interface_properties(args.name, args.netns)
    if args.json:
        _print_json(props)
    else:
        print(show.interface_status(props))
    return exitcodes.OK


async def _daemon_status(client: Client, args: argparse.Namespace) -> int:
    status = {
        **await client.manager_properties(),
        "Pid": await client.daemon_pid(),
        "Interfaces": await _interfaces(client),
    }
    if args.json:
        _print_json(status)
    else:
        print(show.daemon_status(status, started=show.process_start(status["Pid"])))
    return exitcodes.OK


async def cmd_create(client: Client, args: argparse.Namespace) -> int:
    path = await client.create_interface(
        args.name, args.if_id, netns=args.netns, link=args.link, mtu=args.mtu,
        external=args.external, addresses=args.addresses,
    )
    print(path)
    return exitcodes.OK


async def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    if len(args.names) == 1:
        await client.delete_interface(args.names[0], netns=args.netns, force=args.force)
    else:
        await client.delete_interfaces(args.names, netns=args.netns, force=args.force)
    return exitcodes.OK


async def cmd_attach(client: Client, args: argparse.Namespace) -> int:
    result = await client.attach(args.name, args.owner, netns=args.netns)
    if args.json:
        _print_json({"path": result.path, "if_id": result.if_id, "mark": result.mark, "mask": result.mask})
    else:
        print(f"{result.path} if_id {result.if_id} mark 0x{result.mark:x}/0x{result.mask:x}")
    return exitcodes.OK


async def cmd_detach(client: Client, args: argparse.Namespace) -> int:
    deleted = await client.detach(args.name, args.owner, netns=args.netns)
    if deleted:
        print(f"{args.name} deleted (last reference).")
    return exitcodes.OK


async def cmd_address(client: Client, args: argparse.Namespace) -> int:
    call = client.add_address if args.action == "add" else client.remove_address
    await call(args.name, args.owner, args.cidr, netns=args.netns)
    return exitcodes.OK


async def cmd_route(client: Client, args: argparse.Namespace) -> int:
    call = client.add_route if args.action == "add" else client.remove_route
    await call(
        args.name, args.owner, args.destination, netns=args.netns,
        table=args.table, src=args.src, metric=args.metric, peer=args.peer,
    )
    return exitcodes.OK


async def cmd_reconcile(client: Client, args: argparse.Namespace) -> int:
    counts = await client.reconcile()
    if args.json:
        _print_json(counts)
    else:
        print(", ".join(f"{key} {value}" for key, value in sorted(counts.items())) or "nothing to do")
    return exitcodes.OK


async def cmd_reload(client: Client, args: argparse.Namespace) -> int:
    await client.reload()
    return exitcodes.OK


async def cmd_monitor(client: Client, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def on_signal(msg: Any) -> None:
        event = show.signal_event(msg)
        if event is None:
            return
        if args.json:
            print(json.dumps(event, sort_keys=True), flush=True)
        else:
            print(show.event_line(event), flush=True)

    await client.subscribe(on_signal)
    lost = loop.create_task(client.bus.wait_for_disconnect())
    stopped = loop.create_task(stop.wait())
    await asyncio.wait({lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
    lost.cancel()
    stopped.cancel()
    return exitcodes.OK


COMMANDS = {
    "list": cmd_list, "status": cmd_status, "create": cmd_create, "delete": cmd_delete,
    "attach": cmd_attach, "detach": cmd_detach, "address": cmd_address, "route": cmd_route,
    "reconcile": cmd_reconcile, "reload": cmd_reload, "monitor": cmd_monitor,
}


async def run(args: argparse.Namespace) -> int:
    client = await Client.connect(args.bus)
    try:
        return await COMMANDS[args.command](client, args)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        return asyncio.run(run(args))
    except XfrmidError as exc:
        print(f"xfrmctl: {exc}", file=sys.stderr)
        return exitcodes.exit_code(exc)
    except KeyboardInterrupt:
        return exitcodes.OK
    except BrokenPipeError:
        return exitcodes.OK
    except Exception as exc:  # never a traceback for the user
        print(f"xfrmctl: {args.command} failed unexpectedly ({type(exc).__name__}: {exc}).", file=sys.stderr)
        return exitcodes.FAILED


if __name__ == "__main__":
    sys.exit(main())
