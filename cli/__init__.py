"""Thin click layer over :mod:`medseg` (installed as ``medseg_cli``).

Each ``medseg_cli.<pipeline>`` module imports only click at import time and exposes
``commands``: a list of click commands. The heavy work is one call into ``medseg``.
"""
