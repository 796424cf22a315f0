"""Reproduction experiments beyond the entropy suite, one module per method or family. Each module defines
``ARMS: dict[str, Arm]`` and ``EXPERIMENTS: list[Experiment]`` (with ``suite=`` naming the ``entropo reproduce --suite``
that runs them); ``entropo.reproduce.experiments`` collects them all."""
