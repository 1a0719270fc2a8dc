"""Learning-loop benchmark scenarios (``make bench-loop``): each module has
``run(seeds: list[int], quick: bool) -> dict[str, Any]``."""
