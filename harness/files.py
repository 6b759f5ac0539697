"""Reading the harness's data files (SLOs, fault schedules, suites): one place
that turns a missing or malformed file into a ConfigError naming it (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, UsageError

__all__ = ["read_yaml", "make_dir"]


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


def make_dir(path: str | Path, option: str) -> Path:
    """mkdir -p, or a UsageError naming the option when the path cannot be a
    directory (a file on the way, no permission)."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{option} {str(path)!r}: exists and is not a directory") from None
    except NotADirectoryError:
        parent = next((q for q in p.parents if q.exists() and not q.is_dir()), p.parent)
        raise UsageError(f"{option} {str(path)!r}: {str(parent)!r} is a file, not a directory") from None
    except PermissionError:
        raise UsageError(f"{option} {str(path)!r}: permission denied") from None
    except OSError as e:
        raise UsageError(f"{option} {str(path)!r}: cannot be created ({e.strerror})") from None
    return p
