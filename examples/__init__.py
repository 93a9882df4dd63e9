"""Examples that run beside the authority, not part of it (not installed with the package)."""
