"""The white-box canary audit (``fedrec.simulations.audit.whitebox``) of federated_dp and federated_ddp at
the audited setting, at a high-epsilon control, and under each mutation of ``bench.mutation_plugin``.

    python -m bench.canary_audit [--rows audited,control,mutations] [--seed 0]
    python -m bench.canary_audit one ARM EPSILON MUTATION USERS PER_DEVICE GUESSES ROUNDS [EXECUTOR [PADDING]]

Each row runs in its own process (a mutation patches the device code at start-up, as under pytest), on
ML-100K's train split (temporal split, the run's seed), the arm's default settings from ``FedrecConfig``
with the budget ``EPSILON``, every device in every round, federated_dp for 8 rounds and federated_ddp for
its own (one histogram round and 20 DP steps). The audited setting (budget 8) and the control (budget
1000) use 200 devices x 100 canaries (20,000; 9,500 guesses a side: ceiling above 8 at delta 1e-5), with
federated_dp on the stacked trainer; the mutations run at budget 2 on 40 x 100 (4,000 canaries, 1,500 a
side, ceiling far above 2), federated_dp on Opacus per device (the deployed device's path, which the
mutations patch). A row is flagged when its lower
bound exceeds its formal epsilon (the devices' largest ledger epsilon). The honest mechanism must not be
flagged anywhere; noise-div-10 and skip-share (federated_ddp) must be; one-stream leaves the noise's law
and scale as they are, so this audit is not expected to see it (the device-code checks of
``bench.privacy_mutations`` do). seed-32 is not run: it changes deployed devices only, and the audit's
devices are simulated (seeded by design); the seed search of tests/test_randomness.py catches it. Exit status 1 when an expectation fails. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, replace

AUDITED_EPSILON = 8.0
CONTROL_EPSILON = 1000.0
MUTATION_EPSILON = 2.0
ROUNDS = {"federated_dp": 8, "federated_ddp": 0}  # 0: the arm's own (one histogram round + its DP steps)
EXPECT_FLAGGED = {"none": False, "noise-div-10": True, "skip-share": True}  # under the mutation's mechanism


@dataclass(frozen=True)
class Row:
    arm: str
    epsilon: float
    mutation: str
    users: int
    per_device: int
    guesses: int
    executor: str = ""  # federated_dp's: "batched" (the stacked trainer) or "per_device" (Opacus)

    def argv(self) -> list[str]:
        rounds = ROUNDS[self.arm]
        head = [sys.executable, "-m", "bench.canary_audit", "one", self.arm, str(self.epsilon), self.mutation]
        return head + [str(self.users), str(self.per_device), str(self.guesses), str(rounds), self.executor]


def rows(kinds: list[str]) -> list[tuple[str, Row]]:
    out = []
    arms = ("federated_dp", "federated_ddp")
    if "audited" in kinds:
        out += [("audited", Row(arm, AUDITED_EPSILON, "none", 200, 100, 9500, "batched")) for arm in arms]
    if "control" in kinds:
        out += [("control", Row(arm, CONTROL_EPSILON, "none", 200, 100, 9500, "batched")) for arm in arms]
    if "mutations" in kinds:
        for mutation in ("none", "noise-div-10", "one-stream", "skip-share"):
            for arm in arms:
                if mutation == "skip-share" and arm == "federated_dp":
                    continue  # local DP has no shares
                out.append(("mutation", Row(arm, MUTATION_EPSILON, mutation, 40, 100, 1500, "per_device")))
    return out


def one(
    arm: str,
    epsilon: float,
    mutation: str,
    users: int,
    per_device: int,
    guesses: int,
    rounds: int,
    executor: str,
    padding: int = 0,
) -> None:
    if mutation != "none":
        from bench.mutation_plugin import APPLY

        APPLY[mutation]()
    from fedrec.common.config import FedrecConfig
    from fedrec.common.datasets import load_dataset
    from fedrec.common.split import temporal_split
    from fedrec.simulations.arms.base import federation_of
    from fedrec.simulations.arms.table import ARMS
    from fedrec.simulations.audit.whitebox import WhiteboxSettings, whitebox_audit

    data = load_dataset("ml-100k")
    split = temporal_split(data, 0)
    federation = federation_of(ARMS[arm], FedrecConfig())
    device = replace(federation.device, participation=1.0)
    if arm == "federated_dp" and executor:
        device = replace(device, executor=executor)
    server = replace(federation.server, rounds=rounds) if rounds else federation.server
    federation = replace(federation, privacy=replace(federation.privacy, epsilon=epsilon), server=server, device=device)
    started = time.strftime("%H:%M:%S")

    def progress(done: int, total: int) -> None:
        print(f"  {arm} eps {epsilon:g} {mutation}: round {done}/{total} (from {started})", file=sys.stderr, flush=True)

    settings = WhiteboxSettings(users=users, canaries_per_device=per_device, guesses=guesses, padding_items=padding)
    result = whitebox_audit(split, federation, settings, progress)
    print(json.dumps({"arm": arm, "mutation": mutation, **result}))


def commit() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return run.stdout.strip() or "unknown"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        a = sys.argv[2:]
        executor, padding = (a[7] if len(a) > 7 else ""), (int(a[8]) if len(a) > 8 else 0)
        one(a[0], float(a[1]), a[2], int(a[3]), int(a[4]), int(a[5]), int(a[6]), executor, padding)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="audited,control,mutations")
    args = parser.parse_args()
    print(f"commit {commit()}, seed 0, ML-100K", file=sys.stderr, flush=True)
    table, ok, t0 = [], True, time.perf_counter()
    for kind, row in rows(args.rows.split(",")):
        run = subprocess.run(row.argv(), stdout=subprocess.PIPE, text=True, check=False)
        if run.returncode != 0:
            raise SystemExit(f"{row}: the audit did not run (exit {run.returncode})")
        r = json.loads(run.stdout.strip().splitlines()[-1])
        expected = {"audited": False, "control": None, "mutation": EXPECT_FLAGGED.get(row.mutation)}[kind]
        if expected is not None and r["flagged"] != expected:
            ok = False
        trainer = (
            {"batched": "stacked", "per_device": "Opacus"}.get(row.executor, "")
            if row.arm == "federated_dp"
            else "share"
        )
        table.append(
            f"| {kind} | {row.arm} ({trainer}) | {row.mutation} | {r['budget']:g} | {r['noise_multiplier']:.4g} | "
            f"{r['epsilon_formal']:.3f} | {r['m']} | {r['correct']}/{r['guesses']} | {r['epsilon_lower_bound']:.3f} | "
            f"{r['ceiling']:.3f} | {'yes' if r['flagged'] else 'no'} | {r['wall_s']:.0f} |"
        )
        print(table[-1], file=sys.stderr, flush=True)
    print(
        "| row | arm | mutation | budget | noise multiplier | formal epsilon | canaries | correct | lower bound "
        "| ceiling | flagged | wall s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(table))
    print(f"total wall time {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
