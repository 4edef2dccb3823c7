"""`fedrec audit`: state the formal guarantee of a run, then test it instead of trusting it.

One module per job: accounting (ledgers re-checked by a second accountant), bound (the one-run
epsilon lower bound of Steinke, Nasr and Jagielski 2023), attack metrics, membership inference,
canaries, the wire log, the stores at rest, and the report that says every assumption in plain words.
"""
