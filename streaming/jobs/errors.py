"""Errors the streaming job raises on purpose."""

from cityos.errors import CityOSError


class StreamingJobError(CityOSError):
    """The job cannot run as configured or found its state inconsistent; the message says why."""
