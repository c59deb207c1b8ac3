"""meshgate: a Python xDS control plane for Envoy (edge access proxy + service mesh)."""

__version__ = "0.1.0"
