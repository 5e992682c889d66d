"""Per-provider usage extraction: each wire dialect converts into the one bucket model."""
