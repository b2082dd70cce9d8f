"""Command-line tools that work on this port's checkpoints."""
