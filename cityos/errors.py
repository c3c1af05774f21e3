"""Exception roots shared by every part; each package derives its own from CityOSError."""


class CityOSError(Exception):
    """Root of every error CityOS raises on purpose."""


class ConfigError(CityOSError):
    """A setting is missing or wrong; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        super().__init__(f"setting {setting}: {problem}")


class StackError(CityOSError):
    """An embedded service could not be fetched, started, stopped or reached."""
