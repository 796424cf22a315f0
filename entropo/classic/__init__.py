"""Classic RL, bandits and optimization theory: the source papers whose policies are not language models (tabular
MDPs, inventory control, contextual bandits, offline RL on Gymnasium), as program recipes (``entropo run``) and
``entropo reproduce --suite classic`` experiments that share entropo's config, logging, checkpointing and plotting.
Heavy dependencies (Gymnasium, scikit-learn, LightGBM: ``pip install 'entropo[classic]'``) are imported inside
functions through :func:`entropo.extras.require`; importing this package registers the components."""
from entropo.classic import ogsrl  # noqa: F401  (OGSRL, arXiv 2505.16242: program ogsrl, controller lagrange_multiplier)
from entropo.classic import hib  # noqa: F401  (HIB, arXiv 2305.18464: program hib)
