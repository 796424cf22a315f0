"""Search over reasoning steps and search-then-learn.

- ``steps``: partial solutions as token-id steps and the ``StepSampler`` that extends them (exact token accounting);
- ``scorers``: the ``StepScorer`` protocol (verifier/outcome, Monte-Carlo rollout value, log-prob, a process checker);
- ``strategies``: greedy, best-of-N, step-level beam search, MCTS (o1 roadmap survey, arXiv 2412.14135);
- ``mcts``: MCTS-DPO's PUCT/backup and step-level preference pairs with visit-count label smoothing (arXiv 2405.00451);
- ``expert``: expert iteration (search → keep verified → SFT), also ``entropo run expert_iteration``;
- ``runner``: ``entropo search`` (accuracy vs generated tokens per strategy, results.json + plot).
"""

from entropo.search.mcts import MCTS, StepPair, label_smoothing, preference_confidence, tree_pairs
from entropo.search.scorers import SCORERS, StepScorer, make_scorer
from entropo.search.steps import Partial, Step, StepSampler
from entropo.search.strategies import STRATEGIES, beam_search, best_of_n, budget_params, greedy, mcts

__all__ = ["MCTS", "Partial", "SCORERS", "STRATEGIES", "Step", "StepPair", "StepSampler", "StepScorer", "beam_search",
           "best_of_n", "budget_params", "greedy", "label_smoothing", "make_scorer", "mcts", "preference_confidence",
           "tree_pairs"]
