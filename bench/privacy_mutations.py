"""Do the privacy checks fail on a broken mechanism? Each mutation of ``bench.mutation_plugin`` against them.

    python -m bench.privacy_mutations [--mutations none,noise-div-10,one-stream,seed-32,skip-share]

For each mutation, one pytest run of ``CHECKS`` (in its own process, the mutation patched in at start-up)
and the checks that failed. The honest mechanism (``none``) must fail none, every mutation at least one;
the exit status is 1 otherwise. Prints a markdown table (docs/audit.md, "Mutations").
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from bench.mutation_plugin import MUTATIONS

CHECKS = (
    "tests/test_randomness.py",
    "tests/test_independence.py",
    "tests/test_shared_noise.py::test_noise_of_the_sum_has_std_sigma_clip",
    "tests/test_shared_noise.py::test_histogram_round_sends_noisy_counts_and_records_it",
    "tests/test_shared_noise.py::test_under_user_a_device_its_coin_left_out_sends_its_noise_share_alone",
    "tests/test_deployment.py::test_a_deployed_private_device_draws_from_the_operating_system",
)


def failed_checks(mutation: str) -> tuple[list[str], float]:
    started = time.perf_counter()
    argv = [sys.executable, "-m", "pytest", "-p", "bench.mutation_plugin", "--mutation", mutation]
    argv += ["-p", "no:cacheprovider", "-p", "no:randomly", "-q", "-rf", "-W", "ignore", *CHECKS]
    run = subprocess.run(argv, capture_output=True, text=True, check=False)
    failed = sorted({m.group(1) for m in re.finditer(r"^FAILED (\S+)", run.stdout, re.MULTILINE)})
    if run.returncode not in (0, 1) or (run.returncode == 1) != bool(failed):  # 0: all passed, 1: some failed
        raise SystemExit(f"{mutation}: the checks did not run (pytest exit {run.returncode}):\n{run.stdout[-2000:]}")
    return failed, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutations", default=",".join(MUTATIONS))
    args = parser.parse_args()
    rows, ok = [], True
    for mutation in args.mutations.split(","):
        failed, seconds = failed_checks(mutation)
        flagged = bool(failed)
        ok &= flagged == (mutation != "none")
        names = ", ".join(f.split("::")[-1] for f in failed) or "-"
        rows.append(f"| {mutation} | {'yes' if flagged else 'no'} | {len(failed)} | {names} |")
        print(f"{mutation}: {len(failed)} check(s) failed in {seconds:.0f} s", file=sys.stderr, flush=True)
    print("| mutation | flagged | checks failed | which |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
