import numpy as np

from fox_edge.sampling import Sampler, SamplingParams


def test_greedy_is_argmax():
    logits = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    assert Sampler(SamplingParams.greedy())(logits, []) == int(np.argmax(logits))


def test_top_k_one_is_greedy_at_any_temperature():
    logits = np.random.default_rng(1).normal(size=1000).astype(np.float32)
    sampler = Sampler(SamplingParams(temperature=5.0, top_k=1, repeat_penalty=1.0, seed=3))
    assert {sampler(logits, []) for _ in range(20)} == {int(np.argmax(logits))}


def test_min_p_and_top_p_cut_the_tail():
    logits = np.array([10.0, 9.5, 0.0, -1.0, -2.0], dtype=np.float32)
    for params in (
        SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1, repeat_penalty=1.0, seed=0),
        SamplingParams(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0, repeat_penalty=1.0, seed=0),
    ):
        sampler = Sampler(params)
        assert {sampler(logits, []) for _ in range(200)} == {0, 1}


def test_repetition_penalty_demotes_recent_tokens():
    logits = np.array([5.0, 4.9, 1.0], dtype=np.float32)
    params = SamplingParams(temperature=0.0, repeat_penalty=1.5)
    assert Sampler(params)(logits, [0]) == 1
    assert Sampler(params)(logits, [2]) == 0


def test_temperature_sampling_follows_the_distribution():
    logits = np.log(np.array([0.7, 0.2, 0.1], dtype=np.float32))
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=0))
    counts = np.bincount([sampler(logits, []) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(counts, [0.7, 0.2, 0.1], atol=0.03)
