"""Subcommands added by later stages of the pipeline (edit, demo, eval, serve, ...).

Each entry is a function ``register(subparsers)``; ``cli.build_parser`` calls
them all. Keeping this list here lets each stage own its command module.
"""

from __future__ import annotations

REGISTRY: list = []


def _collect() -> None:
    import importlib

    for name in ("edit3dgs.demo_cli", "edit3dgs.edit_cli", "edit3dgs.eval_cli", "edit3dgs.train_cli", "edit3dgs.server"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that stage is not installed in this build
            raise
        REGISTRY.append(mod.register)


_collect()
