"""Dynamic sampling under data parallelism: a short batch is trimmed to the most groups that split over the
data-parallel ranks and the step's minibatches (hand-worked; the GRPO stage's use of it:
tests/pipeline/test_grpo_dynamic_sampling.py)."""
import pytest

from r1mega.algorithms.dynamic_sampling import dynamic_sampling_metrics, dynamic_sampling_trim, dynamic_sampling_unit


@pytest.mark.parametrize("groups,G,dp,minibatches,expected", [
    (5, 4, 2, 1, 4),    # whole groups over 2 ranks
    (7, 16, 2, 4, 6),   # 16 rows a group: any even number of groups splits into 4 minibatches per rank
    (7, 1, 2, 2, 4),    # 1 row a group: 2 ranks x 2 minibatches need multiples of 4
    (3, 2, 2, 4, 0),    # unit lcm(2, 8/2) = 4 > 3: nothing to train on (the step is skipped)
    (6, 3, 1, 4, 4),    # one rank: 3K rows into 4 minibatches -> K multiple of 4
    (8, 2, 2, 2, 8),    # already a multiple: unchanged
])
def test_trim_hand_values(groups, G, dp, minibatches, expected):
    n = dynamic_sampling_trim(groups, G, dp, minibatches)
    assert n == expected
    assert n % dp == 0 and (n * G // dp) % minibatches == 0  # whole groups per rank, equal minibatches


def test_unit_is_the_smallest_even_split():
    for G in range(1, 9):
        for dp in (1, 2, 4):
            for mb in (1, 2, 3, 4):
                unit = dynamic_sampling_unit(G, dp, mb)
                assert min(k for k in range(1, 200) if k % dp == 0 and (k * G // dp) % mb == 0 and
                           (k * G) % dp == 0) == unit
    with pytest.raises(ValueError, match="dp_size=0"):
        dynamic_sampling_unit(4, 0, 1)


def test_metrics():
    assert dynamic_sampling_metrics(8, 3, 2, 1, 2) == {
        "dynamic_sampling/groups_sampled": 8.0, "dynamic_sampling/groups_informative": 3.0,
        "dynamic_sampling/groups_kept": 2.0, "dynamic_sampling/groups_trimmed": 1.0, "dynamic_sampling/rounds": 2.0}
