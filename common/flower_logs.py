"""Flower's log lines printed once.

Importing Opacus configures the root logger (``logging.basicConfig`` in ``opacus.utils.module_utils``), and
Flower's ``flwr`` logger, which has a console handler of its own, also passes every record up to the root:
each line of a ServerApp or ClientApp process came out twice, once in each format.
"""

from __future__ import annotations

import logging


def single_flower_lines() -> None:
    logging.getLogger("flwr").propagate = False
