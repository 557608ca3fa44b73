"""The convolutional encoder's sizing rules (dti_sklearn._torch.encoder)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dti_sklearn._torch.encoder import MAX_SIDE, Encoder


@pytest.mark.parametrize(
    ("size", "pool", "read"),
    [((8, 8), 1, (8, 8)), ((28, 28), 1, (28, 28)), ((32, 32), 1, (32, 32)),
     ((33, 33), 2, (17, 17)), ((64, 64), 2, (32, 32)), ((48, 200), 2, (24, 100)),
     ((100, 100), 4, (25, 25))],
)
def test_large_images_are_pooled_to_at_most_max_side(size, pool, read):
    encoder = Encoder(1, size)
    assert encoder.input_pool == pool
    assert min(read) <= MAX_SIDE
    # the pooled encoder is the encoder of the pooled size, weight for weight
    same = Encoder(1, read)
    same.load_state_dict(encoder.state_dict())
    images = torch.rand(3, 1, *size)
    expected = same(F.avg_pool2d(images, pool, ceil_mode=True) if pool > 1 else images)
    torch.testing.assert_close(encoder(images), expected)


def test_pooling_averages_the_pixels():
    # a bright 2 x 2 block reads as one bright pixel of the 32 x 32 input
    encoder = Encoder(1, (64, 64))
    seen = []
    encoder.features.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    images = torch.zeros(1, 1, 64, 64)
    images[0, 0, 10:12, 20:22] = 1.0
    images[0, 0, 40, 40] = 1.0
    encoder(images)
    pooled = seen[0][0, 0]
    assert pooled.shape == (32, 32)
    assert pooled[5, 10] == 1.0 and pooled[20, 20] == 0.25
    assert pooled.sum() == 1.25


def test_encoders_pickled_before_pooling_read_full_size():
    # a pickle from before the attribute existed has no input_pool: the class
    # default reads the images as they come, as that version did
    encoder = Encoder(1, (64, 64))
    images = torch.rand(2, 1, 64, 64)
    pooled = encoder(images)
    del encoder.input_pool
    full = encoder.project(encoder.pool(encoder.features(images)))
    torch.testing.assert_close(encoder(images), full)
    assert not torch.allclose(pooled, full)
