"""meshgate.xds.translate"""
