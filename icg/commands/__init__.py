"""Subcommands of ``python -m icg``. Each module defines ``register(subparsers)``, which adds its parsers
and sets ``func`` (``args -> exit code``). Modules import only argparse at the top; the work they call
is imported inside ``func``, so ``icg --help`` stays fast."""

COMMAND_MODULES = (
    "icg.commands.caption",
    "icg.commands.models",
    "icg.commands.batch",
    "icg.commands.dataset",
    "icg.commands.app",
    "icg.commands.train",
    "icg.commands.doctor",
    "icg.commands.bench",
)
