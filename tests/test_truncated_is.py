import math

import pytest
import torch

from entropo.algorithms.shaping import truncated_is
from entropo.batch import Batch


def test_truncated_is_weights_by_the_capped_ratio_by_hand():
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    b = Batch(input_ids=torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 4, dtype=torch.long),
              response_mask=mask, rewards=torch.zeros(1), group_ids=torch.zeros(1, dtype=torch.long))
    b.old_logprobs = torch.tensor([[0.0, math.log(0.5), math.log(0.9), math.log(0.2)]])
    b.behaviour_logprobs = torch.tensor([[5.0, math.log(0.5), math.log(0.3), math.log(0.4)]])
    b.token_weights = torch.tensor([[0.0, 1.0, 1.0, 0.5]])  # an earlier selection halved the last token
    m = truncated_is(b, cap=2.0)
    # ratios: 1, 3 -> capped at 2, 0.5; the prompt token keeps weight 0
    torch.testing.assert_close(b.token_weights, torch.tensor([[0.0, 1.0, 2.0, 0.25]]))
    assert m["tis_ratio_mean"] == pytest.approx((1 + 3 + 0.5) / 3)
    assert m["tis_capped_frac"] == pytest.approx(1 / 3)
    assert m["tis_weight_mean"] == pytest.approx((1 + 2 + 0.5) / 3)
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is(b, cap=0)
