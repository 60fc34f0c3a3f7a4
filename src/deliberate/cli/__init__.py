"""deliberate."""
