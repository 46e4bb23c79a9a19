"""The one error type for bad checkpoints: always names the file, and the layer where there is one."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded. ``str()`` is one line: ``<file>: <layer>: <problem>``."""

    def __init__(self, path: str, problem: str, layer: str | None = None) -> None:
        self.path, self.layer, self.problem = str(path), layer, problem
        where = f"{self.path}: {layer}: " if layer else f"{self.path}: "
        super().__init__(where + problem)
