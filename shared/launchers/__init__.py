"""make_launcher(settings) picks the launcher; nothing else branches on its kind."""

from __future__ import annotations

from shared.settings import Settings

from .base import Launcher, MachineRef, MachineSpec, MachineStatus

__all__ = ["Launcher", "MachineRef", "MachineSpec", "MachineStatus", "make_launcher"]


def make_launcher(settings: Settings) -> Launcher:
    """The launcher named by LAUNCHER."""
    match settings.launcher:
        case "local":
            from .local import LocalLauncher

            return LocalLauncher(settings)
        case "fly":
            from .fly import FlyLauncher

            return FlyLauncher(settings)
    raise ValueError(f"unknown launcher {settings.launcher!r}")
