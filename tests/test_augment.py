import pytest
import torch

from model.features.augment import AugmentConfig, augment_batch


def _batch():
    x = torch.arange(1, 2 * 10 * 3 + 1, dtype=torch.float32).reshape(2, 10, 3)
    lengths = torch.tensor([10, 6])
    x[1, 6:] = 0
    return x, lengths


def test_truncation_keeps_a_suffix_that_ends_at_the_request():
    x, lengths = _batch()
    out, keep = augment_batch(x, lengths, AugmentConfig(truncate_prob=1.0, min_length=2), torch.Generator().manual_seed(1))
    for b in range(2):
        k = int(keep[b])
        assert 2 <= k <= int(lengths[b])
        assert torch.equal(out[b, :k], x[b, int(lengths[b]) - k : int(lengths[b])])
        assert torch.all(out[b, k:] == 0)


def test_time_masking_zeroes_one_span_but_never_the_last_event():
    x, lengths = _batch()
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        out, keep = augment_batch(x, lengths, AugmentConfig(mask_prob=1.0, max_mask=3), gen)
        assert torch.equal(keep, lengths)
        for b in range(2):
            last = int(lengths[b]) - 1
            assert torch.equal(out[b, last], x[b, last])
            zeroed = (out[b, : last + 1] == 0).all(dim=-1)
            assert 1 <= int(zeroed.sum()) <= 3


def test_disabled_augmentation_returns_the_batch_unchanged():
    x, lengths = _batch()
    out, keep = augment_batch(x, lengths, AugmentConfig(), torch.Generator())
    assert out is x and keep is lengths


@pytest.mark.parametrize("field,value", [("truncate_prob", 1.5), ("mask_prob", -0.1)])
def test_probabilities_outside_unit_interval_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})
