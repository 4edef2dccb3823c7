"""Item rows averaged over the examples that used them: nodes, then the server's weighted mean."""

import numpy as np
import torch

from fedrec.common.item_rows import COUNTS, ITEM_TABLE, RowMean, example_counts, for_weighted_mean


def test_node_then_server_gives_each_row_the_count_weighted_mean_over_all_devices():
    rng = np.random.default_rng(0)
    n_items, dim = 7, 3
    global_rows = torch.from_numpy(rng.normal(size=(n_items, dim)))
    devices = []  # (rows after training, counts): untouched rows keep their global value, as Adam leaves them
    for _ in range(5):
        counts = torch.from_numpy(rng.integers(0, 3, n_items).astype(np.float64))
        counts[6] = 0.0  # nobody uses item 6
        rows = global_rows.clone()
        used = counts > 0
        rows[used] += torch.from_numpy(rng.normal(size=(int(used.sum()), dim)))
        devices.append((rows, counts))

    nodes = [devices[:2], devices[2:]]
    replies, weights = [], []
    for node in nodes:
        mean = RowMean(global_rows)
        for rows, counts in node:
            mean.add(rows, counts)
        replies.append({ITEM_TABLE: mean.mean().numpy(), COUNTS: mean.counts.numpy(), "other": np.ones(2)})
        weights.append(float(10 * len(node)))

    rewritten = for_weighted_mean(replies, weights, global_rows.numpy())
    assert all(COUNTS not in r for r in rewritten)
    server = sum(w * r[ITEM_TABLE] for w, r in zip(weights, rewritten)) / sum(weights)

    num = sum(rows.numpy() * counts.numpy()[:, None] for rows, counts in devices)
    den = sum(counts.numpy() for _, counts in devices)
    expected = global_rows.numpy().copy()
    used = den > 0
    expected[used] = num[used] / den[used, None]
    np.testing.assert_allclose(server, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(server[6], global_rows.numpy()[6])  # an untouched row keeps its value
    # plain FedAvg would have shrunk every row's step by the share of examples of the devices touching it
    fedavg = sum(w * r[ITEM_TABLE] for w, r in zip(weights, replies)) / sum(weights)
    assert not np.allclose(fedavg[used], expected[used])


def test_example_counts_count_positives_and_negatives():
    items = torch.tensor([[0, 2, 2], [1, 2, 0]])
    assert example_counts(items, 4).tolist() == [2.0, 1.0, 3.0, 0.0]
