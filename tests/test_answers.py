from entropo.algorithms.answers import cluster_ids, final_answer, same_answer
from entropo.types import Example, Sample


def _s(text):
    return Sample(completion=text, example=Example(prompt="q"), task=object())


def test_final_answer_priority():
    assert final_answer(_s("so \\boxed{\\frac{1}{2}} and 7")) == "\\frac{1}{2}"
    assert final_answer(_s("<answer> 12 </answer> then 5")) == "12"
    assert final_answer(_s("3 + 4 = 7.")) == "7"
    assert final_answer(_s("no idea")) is None


def test_clusters_by_equivalent_answers():
    answers = ["7", "7.0", "8", None, "eight", "Eight", None, "1,000", "1000"]
    assert cluster_ids(answers) == [0, 0, 1, 2, 3, 3, 4, 5, 5]
    assert same_answer("1,000", "1000") and not same_answer("7", "8")
