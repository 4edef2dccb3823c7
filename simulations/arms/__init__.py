"""Every arm turns a split into a dense score matrix [n_users, n_items]; one evaluator ranks them all.
The arms are listed once, in ``table.py``; ``registry.py`` binds them to their settings."""
