"""``entropo reproduce``: small-scale reproductions of the papers' claims, with a self-contained report.

Each experiment (entropo.reproduce.experiments) states a paper's claim, compares arms (a shipped recipe plus
overrides) over several seeds, and decides "held" / "did not hold" / "inconclusive" from the measured numbers by a
stated rule; the runner (entropo.reproduce.runner) trains every arm once per seed, and the report
(entropo.reproduce.report) writes Markdown with mean ± spread curves. The entropy-change identity is checked on a
tabular softmax bandit with exact gradients (entropo.reproduce.bandit).
"""

from entropo.reproduce.experiments import ARMS, EXPERIMENTS, select
from entropo.reproduce.runner import SuiteConfig, run_suite

__all__ = ["ARMS", "EXPERIMENTS", "SuiteConfig", "run_suite", "select"]
