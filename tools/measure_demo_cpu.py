"""Measure what `make demo` costs on this machine's CPU with the 1B architecture (random weights: the network's
cost does not depend on the weights' values), cheaply: one VGGT4D run (pass 1, cues, masks, refinement, pass 2)
on a few frames at a reduced size, reported per token, so that tools/demo.sh can size its CPU run and predict
its duration.

    .venv/bin/python tools/measure_demo_cpu.py [--frames 2] [--width 224] [--height 168] [--threads N]

Prints one JSON line: for building the model and for one VGGT4D run, the wall time and the CPU time of all
threads divided by the thread count (what the wall time would be on otherwise idle cores), and the latter per
token (frames x (patches + 5 special tokens)).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--height", type=int, default=168)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from vggt4d_ros.dynamic import VGGT4D, VGGT4DConfig
    from vggt4d_ros.model import VGGT, resolve_config

    def timed(fn):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - w0, (time.process_time() - c0) / args.threads

    torch.manual_seed(0)
    holder = {}
    build = timed(lambda: holder.setdefault("model", VGGT(resolve_config("vggt-1b")).eval()))
    model = holder["model"]
    images = torch.rand(args.frames, 3, args.height, args.width)
    tokens = args.frames * ((args.height // 14) * (args.width // 14) + 5)
    run = timed(lambda: VGGT4D(model, VGGT4DConfig()).run(images))
    print(json.dumps({"threads": args.threads, "frames": args.frames, "size": [args.width, args.height],
                      "tokens": tokens, "build_wall_s": round(build[0], 1), "build_cpu_s": round(build[1], 1),
                      "vggt4d_wall_s": round(run[0], 2), "vggt4d_cpu_s": round(run[1], 2),
                      "vggt4d_cpu_s_per_token": round(run[1] / tokens, 5)}))


if __name__ == "__main__":
    main()
