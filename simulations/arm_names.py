"""The harness's arm names, defined once: the experiment builder and the CLI's defaults read them here
(a light module, so the CLI does not import the engine to show its help)."""

FEDERATED_ARMS = ("federated", "federated_dp", "federated_ddp", "federated_user_dp")
# The arms trained under DP, in the order the report's headline and --sweep list them.
PRIVATE_ARMS = ("federated_dp", "federated_ddp", "federated_user_dp", "centralized_dp")

# The default `fedrec simulate` (README's main job) keeps within about 10 minutes on 2 cores; the
# noise-on-the-aggregate arms (federated_ddp, federated_user_dp) and centralized_dp are asked for with --arms.
DEFAULT_ARMS = ("random", "popularity", "ease", "centralized", "federated", "federated_dp")
