"""The ``vggt4d`` command line: one entry point, one subcommand per job.

Subcommands are registered lazily: a subcommand's module (and its heavy imports such as torch or rclpy) is
only imported when that subcommand runs, so ``vggt4d --help`` is instant and works without ROS.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

# name -> (module, one-line help). Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("vggt4d_ros.offline", "run VGGT4D offline on a folder of images, a video or a bag"),
    "demo-data": ("vggt4d_ros.synthetic", "render the bundled synthetic sample sequence to a folder"),
    "replay": ("vggt4d_ros.ros.replay", "replay a bag through the ROS 2 node and record its outputs"),
    "bench": ("vggt4d_ros.bench", "benchmarks: VGGT4D vs VGGT, streamed cues, memory"),
    "eval": ("vggt4d_ros.evaluation", "evaluate masks (DAVIS J&F) and poses (ATE/RPE)"),
}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vggt4d", description="VGGT4D: dynamic masks, poses and static maps "
                                     "from camera images (offline tools and ROS 2 replay).")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(func=mod.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
    except ModuleNotFoundError as exc:
        sys.stderr.write(f"vggt4d: this subcommand needs a module that is not installed: {exc.name}\n")
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        sys.stderr.write(f"vggt4d {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("vggt4d: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    # Run through the importable module so subcommands and this entry point share one CLIError class.
    from vggt4d_ros.cli import main as _main

    sys.exit(_main())
