"""``GET /api/v1/openapi.json``: the OpenAPI 3 document of the whole API, unauthenticated.

The document (``coordinator/openapi.yaml``, shipped in the package) is written by hand
next to the code it describes; tests/test_openapi.py runs schemathesis against a live
coordinator with it, so an answer the document does not allow fails the suite. It is
served without a signature: it describes the API, it reveals nothing about the cluster,
and a client or tool must be able to read it before it has a key.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from dffmpeg import __version__

DOCUMENT = Path(__file__).with_name("openapi.yaml")

bp = Blueprint("openapi", __name__)


@functools.cache
def document() -> dict[str, Any]:
    import yaml

    data: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    data["info"]["version"] = __version__
    return data


@bp.get("/api/v1/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(document())
