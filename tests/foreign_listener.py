"""A listener meshgate does not manage, for tests of what only Envoy can refuse.

An operator may give an Envoy listeners of its own (a health or stats port in
its bootstrap). meshgate cannot know them, so a mesh listener on the same
address is refused by Envoy alone: by `envoy --mode validate` when the Envoy
that validates is configured the same way (`envoy_with`, via MESHGATE_ENVOY),
and by the running Envoy as an LDS NACK ("duplicate address").

    listener = foreign_listener(port)
    boot["static_resources"]["listeners"].append(listener)        # the running Envoy
    monkeypatch.setenv("MESHGATE_ENVOY", str(envoy_with(tmp, listener)))  # validation
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from meshgate.fleet.envoy import find_envoy

NAME = "host-reserved"


def foreign_listener(port: int, name: str = NAME) -> dict[str, Any]:
    """A static listener on 127.0.0.1:`port` that answers every connection with nothing."""
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.direct_response",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"},
        }]}],
    }


def envoy_with(workdir: Path, listener: dict[str, Any]) -> Path:
    """An executable running the real Envoy (find_envoy) with `listener` merged into
    whatever bootstrap it is given (Envoy's --config-yaml appends it to the static
    listeners): an Envoy whose operator configured that listener."""
    extra = json.dumps({"static_resources": {"listeners": [listener]}})
    path = workdir / "envoy-with-host-listener"
    path.write_text(f'#!/bin/sh\nexec {shlex.quote(find_envoy())} "$@" --config-yaml {shlex.quote(extra)}\n')
    path.chmod(0o755)
    return path
