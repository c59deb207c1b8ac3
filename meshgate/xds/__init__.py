"""meshgate.xds"""
