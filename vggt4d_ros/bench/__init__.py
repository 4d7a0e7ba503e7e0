"""``vggt4d bench``: VGGT4D vs plain VGGT (time, per-stage time, streamed cues vs stored q/k, memory vs frames,
largest sequence within a memory budget). See ``bench/README.md`` for what each number means.

``add_arguments(parser)`` and ``run(args) -> int`` are the subcommand hooks used by :mod:`vggt4d_ros.cli`;
:func:`run_benchmark` with :class:`BenchSettings` is the programmatic entry point.
"""

from .runner import SECTIONS, TARGETS, BenchSettings, add_arguments, run, run_benchmark, write_outputs
from .stats import LinearFit, SearchResult, fit_line, largest_fitting

__all__ = ["SECTIONS", "TARGETS", "BenchSettings", "LinearFit", "SearchResult", "add_arguments", "fit_line",
           "largest_fitting", "run", "run_benchmark", "write_outputs"]
