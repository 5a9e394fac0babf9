"""Custom checkov policies for reelflow (loaded with --external-checks-dir infra/checkov)."""
