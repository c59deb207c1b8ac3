"""meshgate.ca: the mesh certificate authority.

- `keys`: the store key that seals CA (and edge) private keys at rest;
- `authority`: pure X.509 (roots, SVIDs, server certificates, import checks);
- `identity`: `IdentityIssuer`, per-proxy SVIDs in memory for the xDS server;
- `rotation`: the root/intermediate rotation state machine.

    keybox = create_keybox(db_url)           # at init: env key or new <db>.key (0600)
    with write(engine, "init") as w:
        initialize_ca(w, keybox, "example.org", now)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshgate.ca.authority import fingerprint
from meshgate.ca.errors import CaError, CaKeyError
from meshgate.ca.keys import KeyBox, create_keybox, load_keybox

if TYPE_CHECKING:
    from meshgate.store.ca import CaRow
    from meshgate.store.txn import Write

__all__ = [
    "CaError",
    "CaKeyError",
    "KeyBox",
    "create_keybox",
    "fingerprint",
    "initialize_ca",
    "load_keybox",
]


def initialize_ca(w: Write, keybox: KeyBox, trust_domain: str, now: float) -> CaRow:
    """Create the mesh's root CA (ECDSA P-256, 10 years) inside the caller's write.

    Records a revision change of kind "ca". Refuses when a signing CA exists.
    """
    from meshgate.ca.authority import cert_pem, create_root, key_pem
    from meshgate.store import ca as store_ca

    if store_ca.list_cas(w.conn, ("active", "next")):
        raise CaError("the store has a CA already (see `meshgate ca show`)")
    cert, key = create_root(trust_domain, now)
    return store_ca.insert_ca(
        w,
        cert_pem=cert_pem(cert),
        chain_pem="",
        key_encrypted=keybox.encrypt(key_pem(key).encode()),
        status="active",
        now=now,
    )
