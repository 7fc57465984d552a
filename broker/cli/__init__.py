"""The ``gpubroker`` command line: typer apps, one module per command group.

Modules here are thin (parse, call the SDK, render) and import nothing heavy at module
level, so ``gpubroker --help`` stays fast.
"""
