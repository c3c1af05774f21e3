"""Grafana for CityOS: dashboards as code, the macro expander that proves their queries, push."""

from cityos.errors import CityOSError


class GrafanaError(CityOSError):
    """Building, checking or pushing the Grafana dashboards failed; the message says what."""
