"""Embedded MQTT broker (amqtt) so the demo needs no system package."""

from __future__ import annotations

import logging
from types import TracebackType

from amqtt.broker import Broker

from karkhana.errors import ConnectionFailed

log = logging.getLogger(__name__)


class EmbeddedBroker:
    """An amqtt broker on a loopback port; anonymous access is allowed because it only
    listens on 127.0.0.1 and lives for one demo run."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def __aenter__(self) -> EmbeddedBroker:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        broker = Broker(config)
        try:
            await broker.start()
        except Exception as exc:  # amqtt raises its own BrokerError or OSError
            raise ConnectionFailed(
                f"cannot start the embedded MQTT broker on {self.host}:{self.port}: {exc} "
                "(is another broker running? use --mqtt-port or --broker)"
            ) from exc
        self._broker = broker
        log.info("embedded MQTT broker listening on %s", self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
