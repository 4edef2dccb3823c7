"""The harness: arms, centralized baselines, retention simulator, privacy audit, reports, CLI."""
