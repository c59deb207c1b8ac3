"""meshgate.fleet"""
