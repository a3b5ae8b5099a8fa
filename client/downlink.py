"""Opening a party's downlink (see ``dffmpeg.transport.session``) from its config and Api."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client.api import Api
from dffmpeg.config import ClientConfig

if TYPE_CHECKING:
    from dffmpeg.transport.session import Downlink


def open_downlink(
    api: Api, config: ClientConfig, role: str, background: bool = True
) -> Downlink | None:
    """The negotiated downlink, or None when the config only offers HTTP long-poll.

    With only ``http`` nothing is negotiated and no transport module is even imported,
    so the drop-in pays nothing for transports it does not use. Workers run the
    reachability handshake; clients, which live for one job, do not. A client's
    downlink opens in the background (``background``): it follows its job with HTTP
    long-poll until the transport is ready. A worker's opens at once.
    """
    if all(name == "http" for name in config.transports):
        return None
    from dffmpeg.transport.base import Endpoint
    from dffmpeg.transport.session import Downlink

    def call(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return api.call(method, path, json_body=body, timeout=10)

    endpoint = Endpoint(
        identity=config.client_id,
        role=role,
        coordinator_url=api.base_url,  # the address requests go to now
        hmac_key=config.hmac_key,
        brokers=config.brokers,
        tls_context=api.tls.context() if api.address.scheme == "https" else None,
    )
    worker = role == "worker"
    downlink = Downlink(endpoint, config.transports, call, handshake=worker)
    if worker or not background:
        downlink.open()
    else:
        downlink.open_in_background()
    return downlink
