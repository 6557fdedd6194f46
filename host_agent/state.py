"""The host agent's local record of the volumes it holds (atomic JSON file, mode 0600)."""

import json
import os
from pathlib import Path
from typing import Any

from dvsan.errors import InvalidInput


class HostState:
    """assignment id -> what the host needs to log out and release without asking the station."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise InvalidInput(f"state file {self.path} is unreadable: {e}; move it aside to start afresh") from e
        if not isinstance(data, dict):
            raise InvalidInput(f"state file {self.path} does not hold an object")
        return data

    def save(self, data: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def put(self, assignment: dict[str, Any]) -> None:
        data = self.load()
        data[str(assignment["id"])] = assignment
        self.save(data)

    def remove(self, assignment_id: int) -> None:
        data = self.load()
        data.pop(str(assignment_id), None)
        self.save(data)
