"""Clusters Envoy re-warms, and the endpoints it then needs again.

When Envoy adds or updates an EDS cluster it builds a new cluster that stays
warming until an EDS response for its name arrives, even when the
ClusterLoadAssignment did not change and Envoy already holds it: the new
cluster's watch gets nothing from the old one. Without a response it waits
`initial_fetch_timeout` (15 s by default) and only then uses its cached
endpoints (measured, tests/test_xds_rewarm.py). So after every CDS response
that carries a new or changed EDS cluster, the stream sends EDS for those
names again, even at the same version, right after the CDS response (push
order CDS, EDS: the cluster exists before its endpoints arrive). A NACKed EDS
version is still never resent.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshgate.xds import types
from meshgate.xds.resources import Resource


def endpoint_names(clusters: Iterable[Resource]) -> set[str]:
    """The EDS names that these (new or changed) clusters take their endpoints from."""
    return {name for c in clusters for ref_type, name in c.refs if ref_type == types.ENDPOINT}
