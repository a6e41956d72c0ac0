"""A broker in a process of its own, for tests that measure that process: its memory, its
descriptors, what it logs.  ``python -m tests.standalone_broker [--idle S] [--spare N]``.

It prints ``url URL`` (and ``https PORT`` with ``--https``) once listening, ``devices N`` whenever
the number of devices changes, logs to stderr at INFO, and stops when its stdin closes.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
from typing import Any

from webnet_magic.broker.listener import ServerLimits
from webnet_magic.broker.thread import BrokerThread


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=float, default=ServerLimits.idle, help="seconds a connection may idle")
    parser.add_argument("--connections", type=int, default=ServerLimits.connections)
    parser.add_argument("--accept-pause", type=float, default=ServerLimits.accept_pause)
    parser.add_argument("--spare", type=int, help="allow only this many descriptors beyond those open once started")
    parser.add_argument("--https", action="store_true", help="also serve https on 127.0.0.1 (the --lan mode)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    seen = [0]

    def report(fleet: dict[str, Any]) -> None:
        if len(fleet["devices"]) != seen[0]:
            seen[0] = len(fleet["devices"])
            print("devices", seen[0], flush=True)

    limits = ServerLimits(idle=args.idle, connections=args.connections, accept_pause=args.accept_pause)
    broker = BrokerThread(calibrate=False, limits=limits, on_change=report).start()
    if args.https:
        from webnet_magic.tunnel.lan import make_certificate

        print("https", broker.serve_https("127.0.0.1", make_certificate("127.0.0.1").context), flush=True)
    if args.spare is not None:
        in_use = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + args.spare, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print("url", broker.url, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    broker.stop()


if __name__ == "__main__":
    main()
