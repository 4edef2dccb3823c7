"""report.md opens with one sentence on how the private arms compare with popularity and centralized."""

from __future__ import annotations

from fedrec.simulations.report import headline


def arm(ndcg: float, **extra) -> dict:
    return {"accuracy": {"ndcg@10": ndcg}, **extra}


def test_the_headline_compares_the_private_arms_with_popularity_and_centralized():
    report = {
        "arms": {
            "popularity": arm(0.04),
            "centralized": arm(0.08),
            "federated_dp": arm(0.05, privacy={"epsilon_budget": 8.0, "delta": 1e-5}),
            "centralized_dp": arm(0.06, info={"privacy": {"epsilon": 7.99, "delta": 1e-5}}),
            "federated_ddp": arm(0.055, info={"privacy": {"epsilon": 7.99, "delta": 1e-5}}),
        }
    }
    text = headline(report)
    assert text.startswith("**Private recommendation:** federated_ddp (") and "\n" not in text  # the product first
    assert (
        "federated_ddp (epsilon 7.99, delta 1e-05, record-level, trusting secure aggregation and the devices' "
        "noise shares) NDCG@10 0.0550: 1.38x popularity (0.0400), 0.69x centralized (0.0800)" in text
    )
    assert (
        "federated_dp (epsilon 8, delta 1e-05, record-level, trusting only the device) NDCG@10 0.0500: "
        "1.25x popularity (0.0400), 0.62x centralized (0.0800)" in text
    )
    assert "centralized_dp (epsilon 7.99, delta 1e-05, record-level, trusting whoever holds the pooled data)" in text


def test_no_private_arm_no_headline():
    assert headline({"arms": {"popularity": arm(0.04)}}) == ""


def test_the_headline_states_each_arms_own_unit():
    report = {
        "arms": {
            "popularity": arm(0.04),
            "federated_user_dp": arm(
                0.03, info={"privacy": {"epsilon_budget": 8.0, "delta": 1e-5, "unit": "user-level (everything ...)"}}
            ),
        }
    }
    assert (
        "federated_user_dp (epsilon 8, delta 1e-05, user-level, trusting secure aggregation and the devices' noise "
        "shares) NDCG@10 0.0300: 0.75x popularity" in headline(report)
    )


def test_the_liked_items_section_only_with_rated_held_out_items():
    from fedrec.simulations.report import liked_section

    accuracy = {"hr@10": 0.1, "ndcg@10": 0.05}
    liked = {**accuracy, "liked_hr@10": 0.06, "liked_ndcg@10": 0.03, "liked_share": 0.55}
    section = liked_section({"arms": {"ease": {"accuracy": liked}, "popularity": {"accuracy": liked}}})
    assert section.startswith("## Liked items (test)") and "rated it 4 or more (55.0% of the users" in section
    assert "| ease | 0.0600 | 0.0300 |" in section
    assert liked_section({"arms": {"ease": {"accuracy": accuracy}}}) == ""
