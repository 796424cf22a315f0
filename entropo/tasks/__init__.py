"""Prompt sources with verifiers, registered as ``("task", name)``: ``arithmetic``, ``countdown``,
``reasoning_gym``, ``dataset``. Each factory is ``fn(seed, eval_size=64, **params) -> Task`` (see entropo.types.Task);
unknown params raise a TypeError listing the allowed ones. Heavy libraries are imported lazily by the factories."""

from entropo.tasks import arithmetic, countdown, dataset, mixture, reasoning_gym  # noqa: F401  (registers them)
from entropo.tasks import lp_word_problems, search_qa, text_to_sql  # noqa: F401  (registers them)
from entropo.tasks import preferences  # noqa: F401  (task 'preferences', engine 'preference_replay')
from entropo.tasks import arith_chain  # noqa: F401  (registers it; step-level search, entropo.search)
from entropo.tasks import word_arith  # noqa: F401,E402  (registers word_arith; the agentic AEPO tool task on SmolLM2)
from entropo.tasks import or_scene_graph  # noqa: F401,E402  (registers or_scene_graph)
from entropo.tasks import table_qa  # noqa: F401,E402  (registers table_qa; TaTToo step verifiers: entropo.search.tattoo)
from entropo.tasks.base import stable_seed

__all__ = ["arithmetic", "countdown", "dataset", "mixture", "reasoning_gym", "stable_seed"]
