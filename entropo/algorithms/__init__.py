"""Built-in algorithm components; importing this package registers them (see ``entropo.registry``).

Core kinds live in one module each (advantages, objectives, regularizers, selection, shaping, controllers); each
entropy-control method of the source papers has its own module named after it.
"""

from entropo.algorithms import advantages, controllers, objectives, regularizers, selection, shaping  # noqa: F401
from entropo.algorithms import eapo, igpo  # noqa: F401  (EAPO round reward; advantage igpo)
from entropo.algorithms import (  # noqa: F401
    aepo,
    agentic_aepo,
    ares,
    aspo,
    bapo,
    bnpo,
    capo,
    critique_grpo,
    d3s,
    dump,
    empg,
    empo,
    entropy_mechanism,
    entropy_quantile,
    epo,
    ettrl,
    lp_reg,
    nft,
    otc,
    riskpo,
    seed_grpo,
    siren,
    steer,
    tppo,
)
from entropo.algorithms import alphaopt, conformal_ip  # noqa: F401  (program recipes: entropo run)
from entropo.algorithms import preferences  # noqa: F401  (dpo, ipo, inpo, preference_pairs)
from entropo.search import expert  # noqa: F401  (program recipe expert_iteration: entropo run)
from entropo.search import mcts_dpo as _mcts_dpo  # noqa: F401  (program recipe mcts_dpo: entropo run)
from entropo.search import tattoo as _tattoo  # noqa: F401,E402  (program recipe tattoo: entropo run)
from entropo.algorithms import pav  # noqa: F401  (pav shaping, process_advantage; program prm_train)
