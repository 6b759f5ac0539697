"""Reading the harness's data files (SLOs, fault schedules, suites): one place
that turns a missing or malformed file into a ConfigError naming it (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["read_yaml"]


def read_yaml(path: str | Path, option: str) -> Any:
    """The parsed file; `option` names where the path came from (e.g. --slo)."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{option} {str(path)!r}: file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{option} {str(path)!r}: is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{option} {str(path)!r}: not UTF-8 text (byte {e.object[e.start]:#04x} at "
                          f"offset {e.start}); is it a binary file?") from None
    except PermissionError:
        raise ConfigError(f"{option} {str(path)!r}: permission denied") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{option} {str(path)!r}: not valid YAML: {e}") from None
