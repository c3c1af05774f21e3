"""The NLQ exception tree: one root, subclasses that carry the data a caller needs to answer.

Only the API layer turns these into HTTP replies (a refusal, a clarification, a 4xx).
"""

from __future__ import annotations

from collections.abc import Sequence

from cityos.errors import CityOSError


class NLQError(CityOSError):
    """Root of every error the NL-query service raises on purpose."""


class TimeExpressionError(NLQError):
    """A time expression could not be read, or it points into the future of ``as_of``."""

    def __init__(self, text: str, problem: str) -> None:
        self.text = text
        self.problem = problem
        super().__init__(f"time expression {text!r}: {problem}")


class PlanError(NLQError):
    """A query plan is inconsistent (e.g. a metric grouped by something its table lacks)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


class SQLValidationError(NLQError):
    """SQL that must not run: every reason found, so the refusal can say all of them."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))
