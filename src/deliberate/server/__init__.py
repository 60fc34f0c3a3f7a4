"""``deliberate serve``: strategies behind an OpenAI-compatible API, and a web view of runs.

- :mod:`.openai_api`: ``/v1/chat/completions`` and ``/v1/models`` (a run per request);
- :mod:`.api`: the JSON API for runs, tasks, trees, nodes and exports;
- :mod:`.pages` and ``web/``: the web view;
- :mod:`.app`: the app that assembles them (auth, limits, errors) and runs it;
- :mod:`.config`: :class:`ServeConfig`.

See docs/server.md.
"""

from deliberate.server.app import BackgroundServer, create_app, serve
from deliberate.server.config import RouteConfig, ServeConfig, ServeLimits

__all__ = ["BackgroundServer", "RouteConfig", "ServeConfig", "ServeLimits", "create_app",
           "serve"]
