"""The `vpp` command line: thin Typer commands over the Python API. Only this package prints.

Each command lives in its own module and registers itself on `app` when imported here.
"""

from vppcli.cli import bench  # noqa: F401  (registers `vpp bench`)
from vppcli.cli import checkpoints  # noqa: F401  (registers `vpp convert`, `vpp weights`, `vpp info`)
from vppcli.cli import evaluate  # noqa: F401  (registers `vpp eval`, `vpp eval-split`)
from vppcli.cli import segment  # noqa: F401  (registers `vpp segment`)
from vppcli.cli.app import app

__all__ = ["app"]
