"""Opening a party's downlink (see ``dffmpeg.transport.session``) from its config and Api."""

from __future__ import annotations

from typing import Any

from client.api import Api
from dffmpeg.config import ClientConfig
from dffmpeg.transport.base import Endpoint
from dffmpeg.transport.session import Downlink


def open_downlink(api: Api, config: ClientConfig, role: str) -> Downlink | None:
    """The negotiated downlink, or None when the config only offers HTTP long-poll.

    With only ``http`` nothing is negotiated and no transport module is imported, so
    the drop-in pays nothing for transports it does not use. Workers run the
    reachability handshake; clients, which live for one job, do not.
    """
    if all(name == "http" for name in config.transports):
        return None

    def call(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return api.call(method, path, json_body=body, timeout=10)

    endpoint = Endpoint(
        identity=config.client_id,
        role=role,
        coordinator_url=config.coordinator_url,
        hmac_key=config.hmac_key,
        brokers=config.brokers,
    )
    downlink = Downlink(endpoint, config.transports, call, handshake=role == "worker")
    downlink.open()
    return downlink
