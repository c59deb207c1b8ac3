"""Test helper: the real Envoy on a proxy's translated resources, without the xDS server.

`meshgate.config.envoy_check.static_bootstrap` makes them static (RDS references
inlined, EDS clusters STATIC with their endpoints, SDS names served by static
secrets); here the secrets are what the server would send the proxy over SDS
(from the store's own CA), so the Envoy serves real traffic.
"""

from __future__ import annotations

import time
from pathlib import Path

from meshgate.config.envoy_check import static_bootstrap
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.model import World
from meshgate.xds.secrets import SecretProvider
from meshgate.xds.translate import translate_proxy


def static_envoy(world: World, name: str, secrets: SecretProvider, workdir: Path,
                 label: str | None = None) -> EnvoyProcess:
    """An Envoy (started, not yet LIVE) running proxy `name` of `world` as static config."""
    proxy = world.proxies[name]
    boot = static_bootstrap(proxy, translate_proxy(world, name),
                            secrets=secrets.secrets_for(proxy, world, time.time()).values(),
                            admin_port=free_port())
    return EnvoyProcess(boot, workdir, label or name).start()
