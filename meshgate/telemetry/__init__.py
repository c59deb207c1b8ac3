"""meshgate.telemetry"""
