"""The subcommands of the ``unimeter`` command, one module per command group.

``service/cli.py`` builds the argument tree and dispatches here. Every client command talks to the
public gRPC API of a node through :mod:`.connection`; none of them imports the node or client core,
so the CLI works against any deployment the API reaches.
"""

from __future__ import annotations

__all__: list[str] = []
