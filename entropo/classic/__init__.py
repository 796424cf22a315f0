"""Classic RL, bandits and optimization theory: the source papers whose policies are not language models (tabular
MDPs, inventory control, contextual bandits, offline RL on Gymnasium), as program recipes (``entropo run``) and
``entropo reproduce --suite classic`` experiments that share entropo's config, logging, checkpointing and plotting.
Heavy dependencies (Gymnasium, scikit-learn, LightGBM: ``pip install 'entropo[classic]'``) are imported inside
functions through :func:`entropo.extras.require`; importing this package registers the components."""
from entropo.classic import hib, ogsrl  # noqa: F401  (offline_b: programs hib, ogsrl; controller lagrange_multiplier)
