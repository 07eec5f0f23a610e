"""What every command shares: the global options and the lazily loaded workspace."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from trustzones.config import Config
from trustzones.zone import Workspace, find_config


@dataclass
class CliState:
    config_path: str | None = None
    verbose: bool = False
    _workspace: Workspace | None = field(default=None, init=False)
    _config: Config | None = field(default=None, init=False)

    @property
    def path(self) -> Path:
        return find_config(self.config_path)

    def config(self) -> Config:
        if self._config is None:
            self._config = Config.from_yaml(self.path)
        return self._config

    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = Workspace(self.config())
        return self._workspace

    def close(self) -> None:
        if self._workspace is not None:
            self._workspace.close()
            self._workspace = None


def state(ctx: click.Context) -> CliState:
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState)
    return obj


pass_state = click.make_pass_decorator(CliState)
