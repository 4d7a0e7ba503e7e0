"""The one exception type of the evaluation harness."""

from __future__ import annotations


class EvaluationError(ValueError):
    """An evaluation cannot run: missing or unreadable files, mismatched frames or shapes, too few poses.

    The message is one line that says what was wrong and what is expected; the ``vggt4d eval`` command turns
    it into a user-facing error.
    """
