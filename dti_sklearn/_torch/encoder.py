"""A small convolutional encoder sized by the image shape."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    groups = min(8, out_channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    )


#: Largest shorter side, in pixels, that the encoder's convolutions read.
MAX_SIDE = 32


class Encoder(nn.Module):
    """Map ``(N, C, H, W)`` images to ``(N, n_features)`` feature vectors.

    Images whose shorter side exceeds :data:`MAX_SIDE` pixels are first
    average-pooled by the smallest power of two that brings it within (64 x 64
    images are read at 32 x 32): the transformation parameters are coarse
    quantities, and at full size the convolutions cost as much as the rest
    of a training step.  Then stride-2 convolutions (the stem first) until
    the shorter side is at most 8 pixels (none for 8 x 8 images, two for
    28 x 28 and for 64 x 64), each doubling the width up to 128, then one
    more convolution that doubles it again.  The last feature map is
    average-pooled to at most 4 x 4 cells and *flattened* rather than
    globally pooled, so the features keep the positions that the
    transformation heads need to align prototypes.  GroupNorm instead of
    BatchNorm makes every sample's features independent of the rest of its
    batch, in training and at prediction alike.

    Parameters
    ----------
    n_channels : int
        Channels of the input images.
    image_size : tuple of int
        ``(H, W)`` of the input images.
    width : int, default=16
        Channels of the stem; doubled at every stride-2 stage, at most 128.
    n_features : int, default=128
        Size of the output feature vector.
    statistics_channels : int, default=0
        How many of the first input channels also give the projection their
        per-image mean, minimum, maximum and standard deviation.  GroupNorm
        removes absolute levels from the convolutional features; colour
        heads need them.
    """

    def __init__(
        self, n_channels: int, image_size: tuple[int, int], width: int = 16,
        n_features: int = 128, statistics_channels: int = 0,
    ) -> None:
        super().__init__()
        height, wide = image_size
        self.input_pool = 1
        while min(height, wide) > MAX_SIDE:
            self.input_pool *= 2
            height, wide = (height + 1) // 2, (wide + 1) // 2
        shorter = min(height, wide)
        n_down = math.ceil(math.log2(shorter / 8)) if shorter > 8 else 0
        # The stem itself has stride 2 when the images are larger than 8 x 8:
        # a full-resolution stem costs three times the rest of the encoder on
        # 28 x 28 images (measured 44 ms against 13 ms per step of 64 images).
        layers = [_block(n_channels, width, 2 if n_down else 1)]
        height, wide = ((height + 1) // 2, (wide + 1) // 2) if n_down else (height, wide)
        channels = width
        for _ in range(max(n_down - 1, 0)):
            out = min(2 * channels, 128)
            layers.append(_block(channels, out, 2))
            channels = out
            height, wide = (height + 1) // 2, (wide + 1) // 2
        out = min(2 * channels, 128)
        layers.append(_block(channels, out, 1))
        channels = out
        self.features = nn.Sequential(*layers)
        self.pool_size = (min(height, 4), min(wide, 4))
        self.pool = nn.AdaptiveAvgPool2d(self.pool_size)
        self.statistics_channels = statistics_channels
        pooled = channels * self.pool_size[0] * self.pool_size[1]
        self.project = nn.Sequential(
            nn.Flatten(),
            nn.Linear(pooled + 4 * statistics_channels, n_features),
            nn.ReLU(inplace=True),
        )
        self.n_features = n_features

    #: Defaults for encoders pickled before the attributes existed.
    statistics_channels: int = 0
    input_pool: int = 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode a batch of images."""
        pooled = images
        if self.input_pool > 1:
            pooled = F.avg_pool2d(images, self.input_pool, ceil_mode=True)
        features = self.pool(self.features(pooled))
        if self.statistics_channels:
            values = images[:, : self.statistics_channels].flatten(2)
            statistics = [
                values.mean(2), values.amin(2), values.amax(2), values.std(2, correction=0),
            ]
            features = torch.cat([features.flatten(1), *statistics], dim=1)
        return self.project(features)
