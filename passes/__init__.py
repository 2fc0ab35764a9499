"""ckir's own passes; each module registers one pass on import."""
