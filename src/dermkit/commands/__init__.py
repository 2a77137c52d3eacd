"""Command modules of the CLI, one file per command family.

Each family module here defines ``register(app, groups)``: ``app`` is the top-level typer app,
``groups`` the sub-apps by name (``data``, ``concepts``); ``vqa`` brings its own sub-app.
``dermkit.cli`` imports the family modules and calls their ``register`` in the order of
``dermkit.cli.COMMAND_MODULES``, which is the order of ``dermkit --help``; a new family is a new
file named there. ``common.py`` holds what several families share (the consoles, the invocation's
arguments for ``--nproc``, the per-method config dialect, table printing); the families import
it and never one another, nor ``dermkit.cli``.
Commands stay thin: parse options, call the layers below, print. Heavy imports go inside the
command functions, so ``dermkit --help`` stays fast.
"""
