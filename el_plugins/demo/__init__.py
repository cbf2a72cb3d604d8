"""The one-command demo and the small data it runs on (no network needed)."""
