"""Obtain datasets into a local cache and verify them; nothing here is ever committed.

ML-100K: the GroupLens copy shipped in the ``recbole==1.2.1`` wheel (reachable through the configured
Python package index even where there is no direct internet), verified by sha256.
ML-1M: the GroupLens archive; users without internet place ``ratings.dat`` in the cache dir themselves.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from fedrec.common.errors import DataError
from fedrec.common.files import writable_dir

DATA_DIR_ENV = "FEDREC_DATA_DIR"
KNOWN_DATASETS = ("ml-100k", "ml-1m")

ML100K_WHEEL = "recbole==1.2.1"
ML100K_MEMBERS = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "fedrec" / "data")


def dataset_dir(name: str, data_dir: str | Path | None = None) -> Path:
    return Path(data_dir or default_data_dir()) / name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(f"{path}: checksum mismatch (sha256 {actual}, expected {expected})")


def _download_ml100k_wheel(workdir: Path) -> Path:
    """Let pip fetch the wheel from whatever index this machine is configured for."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), ML100K_WHEEL]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("recbole-*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"could not download {ML100K_WHEEL} for ML-100K: {last}")
    return wheels[0]


def fetch_ml100k(target: Path, wheel: Path | None = None) -> Path:
    """Extract and verify ML-100K; a wheel already on disk may be passed to skip the download."""
    if all((target / m).exists() for m in ML100K_MEMBERS):
        for member, digest in ML100K_MEMBERS.items():
            verify(target / member, digest)
        return target
    writable_dir(target, "--data-dir")  # before a download that could not be kept
    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel or _download_ml100k_wheel(Path(tmp))
        try:
            archive = zipfile.ZipFile(wheel)
        except zipfile.BadZipFile:
            raise DataError(f"{wheel}: not a wheel (zip) file") from None
        with archive:
            for member, digest in ML100K_MEMBERS.items():
                staged = Path(tmp) / member
                try:
                    staged.write_bytes(archive.read(f"recbole/dataset_example/ml-100k/{member}"))
                except KeyError:
                    raise DataError(f"{wheel}: has no ml-100k/{member}") from None
                verify(staged, digest)
                shutil.move(str(staged), target / member)
    return target


def fetch_ml1m(target: Path, timeout: float = 20.0) -> Path:
    if (target / "ratings.dat").exists():
        return target
    writable_dir(target, "--data-dir")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            zpath = Path(tmp) / "ml-1m.zip"
            with urllib.request.urlopen(ML1M_URL, timeout=timeout) as resp, zpath.open("wb") as out:
                shutil.copyfileobj(resp, out)
            with zipfile.ZipFile(zpath) as archive:
                for member in ("ratings.dat", "movies.dat"):
                    (target / member).write_bytes(archive.read(f"ml-1m/{member}"))
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(
            f"could not download ML-1M ({exc.__class__.__name__}); place GroupLens ratings.dat "
            f"(and optionally movies.dat) in {target}"
        ) from None
    return target


def fetch(name: str, data_dir: str | Path | None = None) -> Path:
    if name not in KNOWN_DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(KNOWN_DATASETS)}")
    target = dataset_dir(name, data_dir)
    return fetch_ml100k(target) if name == "ml-100k" else fetch_ml1m(target)
