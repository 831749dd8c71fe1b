"""Holds the run's machinery: the ``lit-rl`` command, its callbacks, checkpoint writing, loggers and sweeps."""
