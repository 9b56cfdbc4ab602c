"""Feature methods (being written)."""
