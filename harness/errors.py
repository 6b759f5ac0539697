"""The errors msdb raises, and the exit code each one maps to.

    MsdbError                      exit 3 unless a subclass says otherwise
    ├── UsageError                 exit 2: a bad argument; the message names it
    │   └── ConfigError            exit 2: a bad or missing config key/value
    └── InfraError                 exit 3: a server would not start, a verdict
        ├── PortInUseError                 could not be reached, ...
        ├── StartupError
        └── NoStackError

Exit codes (PRODUCT.md): 0 every check passed, 1 a check failed, 2 usage or
configuration error, 3 infrastructure error; and as shells report them, 130
after Ctrl-C (SIGINT) and 143 after SIGTERM (`Interrupted`).
"""

from __future__ import annotations

import signal

__all__ = [
    "EXIT_PASS", "EXIT_FAIL", "EXIT_USAGE", "EXIT_INFRA",
    "MsdbError", "UsageError", "ConfigError", "InfraError",
    "PortInUseError", "StartupError", "NoStackError", "Interrupted",
]

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INFRA = 3


class MsdbError(Exception):
    exit_code = EXIT_INFRA


class UsageError(MsdbError):
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration file or value is wrong; the message names the key."""


class InfraError(MsdbError):
    exit_code = EXIT_INFRA


class PortInUseError(InfraError):
    def __init__(self, port: int, what: str):
        super().__init__(f"port {port} (for {what}) is already in use on 127.0.0.1; "
                         f"free it or choose another block with --base-port")
        self.port = port
        self.what = what


class StartupError(InfraError):
    """A server did not become healthy; the message carries its log tail."""


class NoStackError(InfraError):
    pass


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised where the work can clean up (every `finally`
    runs).  Exit 128 + the signal's number, as shells do: 130, 143."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = int(signum)
        super().__init__(f"signal {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
