"""Named failures of a transcode job; each carries a one-line ``reason`` for the job record."""

from __future__ import annotations


class TranscodeError(Exception):
    """A failed job with a clear reason (bad input, gate failure, encoder died, ...).

    ``retryable`` travels to the broker in the worker's FAILED: a deterministic failure (the same
    source fails the same way every time) is final at once, a transient one is retried with
    the broker's backoff.
    """

    retryable = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadInputError(TranscodeError):
    """The source cannot be transcoded (not a video, truncated, no video stream, ...)."""

    retryable = False


class EncoderFailedError(TranscodeError):
    """An encoder process died, stalled or reported an error."""


class TranscodeCancelled(TranscodeError):
    """The caller set the cancel event."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)


class GateError(TranscodeError):
    """The output broke a conformance rule; ``rule`` names it (e.g. ``hls.extinf-over-target``)."""

    retryable = False  # the pipeline is deterministic: a rerun writes the same output

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"conformance gate: {rule}: {detail}")
        self.rule = rule
        self.detail = detail


class BadSettingsError(TranscodeError):
    """The job's settings cannot run (they came from the wire): a rerun fails the same way."""

    retryable = False


class ResourceLimitError(TranscodeError):
    """The job reached a memory or CPU-time limit (farm/pipeline/limits.py): the same source
    would reach it again."""

    retryable = False
