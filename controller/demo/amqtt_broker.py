"""`python -m lepton_edge.controller.demo.amqtt_broker HOST PORT`: the pure-Python fallback broker.

Anonymous, one TCP listener, no $SYS topics, MQTT 3.1.1 only. Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys


async def serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    host, port = argv[0], int(argv[1])
    asyncio.run(serve(host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
