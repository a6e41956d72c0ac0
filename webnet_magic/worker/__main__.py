"""``python -m webnet_magic.worker URL``: join this machine's GPU to a notebook's broker."""

from __future__ import annotations

import argparse
import logging
import sys

from .native import TokenRefused, run_forever

#: Seconds a thread of this process waits for a busy one to hand over the GIL (CPython's default: 0.005).
#: The socket's loop, the GPU calls and wgpu's poller pass it back and forth dozens of times a job, and
#: each wgpu call gives it up: with a 4 MB frame being read meanwhile, each took it back up to 5 ms late.
SWITCH_INTERVAL = 0.0005


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m webnet_magic.worker",
        description="Run a native WebGPU worker (wgpu-py: Vulkan, Metal or D3D12) for a webnet broker.",
    )
    parser.add_argument("url", help="the worker URL printed by %%webnet url (with its ?token=...)")
    parser.add_argument("--name", help="how this device appears in the notebook's device panel")
    parser.add_argument(
        "--power",
        choices=["high-performance", "low-power"],
        default="high-performance",
        help="which GPU to ask for on machines with two",
    )
    parser.add_argument(
        "--slowdown",
        type=float,
        default=1.0,
        help="stretch each job to this many times its duration (to stand in for slower devices)",
    )
    parser.add_argument(
        "--cache-mb",
        type=float,
        default=1024,
        help="GPU memory kept for arrays reused across jobs (default 1024 MB)",
    )
    parser.add_argument(
        "--depth",
        type=int,
        help="jobs this worker holds at once, the running one included (default: from the link; 1: one at a time)",
    )
    parser.add_argument(
        "--max-buffer-mb",
        type=float,
        help="report (and keep to) a smaller largest buffer than the GPU allows, as a phone would",
    )
    parser.add_argument(
        "--no-warm",
        dest="warm",
        action="store_false",
        help="do not keep the GPU busy (and its clock up) while a job's data arrives (for comparisons)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every job, not only connections")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="webnet worker: %(message)s")
    sys.setswitchinterval(SWITCH_INTERVAL)  # this process is the worker's alone
    try:
        run_forever(
            args.url,
            name=args.name,
            slowdown=args.slowdown,
            depth=args.depth,
            warm=args.warm,
            power_preference=args.power,
            cache_bytes=int(args.cache_mb * 2**20),
            max_buffer_bytes=None if args.max_buffer_mb is None else int(args.max_buffer_mb * 2**20),
        )
    except TokenRefused as exc:
        print(f"webnet worker: refused: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError) as exc:
        print(f"webnet worker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
