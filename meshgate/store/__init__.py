"""meshgate.store"""
