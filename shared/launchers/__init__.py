"""make_launcher(settings, program) picks the launcher; nothing else branches on its kind."""

from __future__ import annotations

from shared.settings import Settings

from .base import Launcher, MachineProgram, MachineRef, MachineSpec, MachineStatus

__all__ = ["Launcher", "MachineProgram", "MachineRef", "MachineSpec", "MachineStatus", "make_launcher"]


def make_launcher(settings: Settings, program: MachineProgram) -> Launcher:
    """The launcher named by LAUNCHER, starting machines that run `program`."""
    match settings.launcher:
        case "local":
            from .local import LocalLauncher

            return LocalLauncher(settings, program=program)
        case "fly":
            from .fly import FlyLauncher

            return FlyLauncher(settings, program=program)
    raise ValueError(f"unknown launcher {settings.launcher!r}")
