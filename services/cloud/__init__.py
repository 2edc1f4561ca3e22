"""What every cloud provider service shares: bundles, signed URLs, polling, reconciliation, reporting."""
