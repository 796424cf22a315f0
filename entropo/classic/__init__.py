"""Classic RL, bandits and optimization theory: the source papers whose policies are not language models (tabular
MDPs, inventory control, contextual bandits, offline RL on Gymnasium), as program recipes (``entropo run``) and
``entropo reproduce --suite classic`` experiments that share entropo's config, logging, checkpointing and plotting.
Heavy dependencies (Gymnasium, scikit-learn, LightGBM: ``pip install 'entropo[classic]'``) are imported inside
functions through :func:`entropo.extras.require`; importing this package registers the components."""
from entropo.classic import offline_data, offline_rl, ota  # noqa: F401,E402  (offline RL: TD3+BC, A2PR, FamO2O, OTA)
from entropo.classic import bilevel_penalty, hdpo, stochastic_pg  # noqa: F401
from entropo.classic import bandits, dr_rpo  # noqa: F401,E402  (registers adyen_bandit, dr_rpo)
from entropo.classic import hib, ogsrl  # noqa: F401  (offline_b: programs hib, ogsrl; controller lagrange_multiplier)
from entropo.classic import zo_ranksgd  # noqa: F401  (program zo_ranksgd: ZO-RankSGD, arXiv 2303.03751)
