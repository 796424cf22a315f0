"""Games: imperfect-information game environments on OpenSpiel (``pip install 'entropo[games]'``), their opponents
and exploitability, decision-time search, and language agents that play them (``entropo reproduce --suite games``).
pyspiel is imported inside functions through :func:`entropo.extras.require`; importing this package registers the
components."""
from entropo.games import credit, env, search  # noqa: F401  (register the poker env/task, advantage, programs)
