"""meshgate.policy"""
