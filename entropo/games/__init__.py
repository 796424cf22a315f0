"""Games: imperfect-information game environments on OpenSpiel (``pip install 'entropo[games]'``), their opponents
and exploitability, decision-time search, and language agents that play them (``entropo reproduce --suite games``).
pyspiel is imported inside functions through :func:`entropo.extras.require`; importing this package registers the
components."""
from entropo.games import herd, portal  # noqa: F401,E402  (game_agents: registers portal_duel, herd_planner)
from entropo.games import credit, env, pokergpt, search  # noqa: F401  (register env, tasks, advantage, programs)
from entropo.games import suspicion  # noqa: F401,E402  (registers the suspicion_agent program)
