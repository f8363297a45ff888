"""The kiosk screen and fleet metrics: a small local web server (``[web]`` in the config).

Imported only when ``[web] listen`` is set (memory: a headless kiosk never loads
``http.server``). :func:`serve` wires it: the feed subscribes to the event log, the server
drives the appliance through the button's own methods. ``server.py`` owns HTTP, ``feed.py``
the event stream, ``metrics.py`` the Prometheus exposition, ``level.py`` the mic level,
``static/`` the page.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from .feed import Feed
from .level import LevelTap, MicMeter
from .server import WebServer, WebSettings

__all__ = ["Feed", "LevelTap", "MicMeter", "WebServer", "WebSettings", "serve"]

log = logging.getLogger("soca.web")


def serve(host: str, port: int, token: str, lang: str, version: str, app: Any, events: Any,
          meter: Optional[MicMeter] = None, private_key: str = "") -> Optional[WebServer]:
    """Start the server, or log why not and return None: the kiosk runs without a screen."""
    if token and private_key and token == private_key:
        log.error("[web] token is the private key: the screen stays off (choose another "
                  "token, e.g. openssl rand -hex 16)")
        return None
    feed = Feed()
    feed.attach(events)
    if token:
        events.redact.add(token)
    server = WebServer(WebSettings(host, port, token, lang, version), app, feed, meter)
    try:
        server.start()
    except OSError as exc:
        feed.detach()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.warning("screen and metrics unavailable: cannot listen on %s (%s); running "
                    "without them", where, exc.strerror or exc)
        return None
    return server
