"""Typed reads of MetricRecord/ConfigRecord values: a wrong kind is a one-line FedrecError naming the key."""

import pytest
from flwr.app import ConfigRecord, MetricRecord

from fedrec.common.errors import FedrecError
from fedrec.common.record_values import bytes_list, float_list, scalar_float, scalar_int


def test_numbers_and_lists_read_as_their_type() -> None:
    metrics = MetricRecord({"n": 3, "x": 0.5, "eps": [1.5, 2.5]})
    assert scalar_float(metrics, "n") == 3.0 and isinstance(scalar_float(metrics, "n"), float)
    assert scalar_int(metrics, "x") == 0
    assert float_list(metrics, "eps") == [1.5, 2.5]
    assert bytes_list(ConfigRecord({"b": [b"ab", b"c"]}), "b") == [b"ab", b"c"]


def test_default_only_for_an_absent_key() -> None:
    metrics = MetricRecord({"n": 3})
    assert scalar_int(metrics, "refused", default=0) == 0
    assert float_list(metrics, "epsilons", default=[]) == []
    assert scalar_int(metrics, "n", default=0) == 3
    with pytest.raises(KeyError):
        scalar_int(metrics, "refused")


@pytest.mark.parametrize(
    ("read", "value"),
    [(scalar_float, "1.0"), (scalar_int, [1]), (float_list, 2.0), (float_list, ["a"]), (bytes_list, ["a"])],
)
def test_a_wrong_kind_names_the_key(read, value) -> None:
    with pytest.raises(FedrecError, match="'k'"):
        read(ConfigRecord({"k": value}), "k")
