"""meshgate.ca"""
