"""The operator console (server-rendered pages at /console): see `routes.add_console`."""

from tether.server.console.routes import add_console
from tether.server.console.sessions import ConsoleSessions

__all__ = ["ConsoleSessions", "add_console"]
