"""``soca-appliance simulate``: run the simulator from the command line until Ctrl-C."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Optional

from ..config import is_loopback
from .assets import AssetError
from .chunking import CHUNKINGS
from .server import Simulator

log = logging.getLogger("soca.simulator")

KEY_ENV = "SOCA_PRIVATE_KEY"
DEFAULT_PORT = 8765


async def _serve_until_signal(sim: Simulator) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        try:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        await sim.serve_forever()
    except asyncio.CancelledError:
        pass


def main(argv: Optional[list[str]] = None) -> int:
    """``soca-appliance simulate``: run the simulator until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="soca-appliance simulate",
        description="Run a local Voice Stream server (ws://, loopback) for development. "
                    f"The expected key comes from ${KEY_ENV}; when it is not set any "
                    "non-empty key is accepted.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default %(default)s; loopback only unless "
                             "--allow-remote)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port (default %(default)s; 0 picks a free one)")
    parser.add_argument("--assets", type=Path, default=None, metavar="DIR",
                        help="folder with manifest.json and the answer MP3s "
                             "(default: the bundled assets)")
    parser.add_argument("--key-field", default="private_key",
                        help="name of the key field in start (default %(default)s)")
    parser.add_argument("--chunking", choices=CHUNKINGS, default="text",
                        help="how a sentence's base64 is cut into chunks: 'text' cuts the "
                             "encoded text at random lengths, as the service may (default); "
                             "'slices' encodes each MP3 slice on its own (each chunk padded)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random cuts of --chunking text (default %(default)s)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow binding a non-loopback address (plain ws://, no TLS)")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers and not logging.getLogger("soca").handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log.getChild("websockets").setLevel(logging.WARNING)   # our own lines say enough
    if not is_loopback(args.host) and not args.allow_remote:
        log.error("refusing to listen on %s: not a loopback address (use --allow-remote "
                  "to override; the simulator speaks unencrypted ws://)", args.host)
        return 2
    if not 0 <= args.port <= 65535:
        log.error("--port must be 0..65535")
        return 2
    expected = os.environ.get(KEY_ENV) or None
    if expected is None:
        log.info("%s is not set: any non-empty key is accepted", KEY_ENV)
    else:
        log.info("expecting the key from %s", KEY_ENV)
    try:
        sim = Simulator(host=args.host, port=args.port, expected_key=expected,
                        key_field=args.key_field, assets_dir=args.assets,
                        chunking=args.chunking, seed=args.seed)
    except AssetError as exc:
        log.error("%s", exc)
        return 1
    log.info("sentence audio: chunking %s%s", args.chunking,
             f" (seed {args.seed})" if args.chunking == "text" else "")
    try:
        asyncio.run(_serve_until_signal(sim))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc.strerror or exc)
        return 1
    return 0
