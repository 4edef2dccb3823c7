"""The size of a device install (`pip install fedrec`) against the full one (`pip install "fedrec[harness]"`).

    python -m bench.bench_install

Builds both into fresh venvs side by side (torch pinned to the CPU build first, as the Makefile does) and
prints each one's size on disk, what the harness adds, and the ratio. Uses pip's cache when it has one.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def torch_pin() -> str:
    """The Makefile's ``TORCH := ...``: the one place the CPU build's version is named."""
    line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("TORCH :="))
    return line.split(":=", 1)[1].strip()


def install(venv: Path, target: str) -> tuple[float, list[str]]:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, torch_pin()], check=True)
    subprocess.run([*pip, target], check=True)
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True)
    return size_mb(venv), sorted(line.split("==")[0].lower() for line in listed.stdout.split())


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        t0 = time.perf_counter()
        device, device_pkgs = install(Path(tmp) / "device", str(ROOT))
        full, full_pkgs = install(Path(tmp) / "full", f"{ROOT}[harness]")
        print(f"device install (pip install fedrec):            {device:7.0f} MB, {len(device_pkgs)} distributions")
        print(f'full install (pip install "fedrec[harness]"):   {full:7.0f} MB, {len(full_pkgs)} distributions')
        print(f"the harness adds {full - device:.0f} MB: {', '.join(sorted(set(full_pkgs) - set(device_pkgs)))}")
        (torch,) = (Path(tmp) / "device").glob("lib/python*/site-packages/torch")
        print(f"torch's CPU build, in both: {size_mb(torch):.0f} MB")
        print(f"device / full: {device / full:.2f} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
