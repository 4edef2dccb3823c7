"""A Flower log line comes out once in a ServerApp or ClientApp process, although Opacus, once imported,
configures the root logger as well."""

from __future__ import annotations

import subprocess
import sys

import pytest

LOG_ONE_LINE = """
import {module}
import opacus.utils.module_utils  # its logging.basicConfig, as the device code's first train request runs it
from logging import INFO
from flwr.common.logger import log
log(INFO, "one-line-only")
"""


@pytest.mark.parametrize("module", ["fedrec.server.app", "fedrec.client.app"])
def test_a_flower_line_prints_once(module):
    done = subprocess.run(
        [sys.executable, "-c", LOG_ONE_LINE.format(module=module)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).count("one-line-only") == 1, done.stderr
