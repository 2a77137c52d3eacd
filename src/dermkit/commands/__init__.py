"""Command modules of the CLI, one file per command family.

Each module here defines ``register(app, groups)``: ``app`` is the top-level typer app, ``groups``
the sub-apps by name (``data``, ``concepts``). ``dermkit.cli`` calls every module's
``register`` when it is imported (in name order), so a command family is added by adding a file.
Commands stay thin: parse options, call the layers below, print. Heavy imports go inside the
command functions, so ``dermkit --help`` stays fast.
"""
