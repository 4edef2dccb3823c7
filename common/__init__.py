"""Pure building blocks of fedrec: data, splits, model, metrics, store, privacy helpers.

Nothing here imports from ``client``, ``server`` or ``simulations``.
"""
