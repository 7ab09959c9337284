"""Feature extractors for image-like observations that SB3's ``NatureCNN`` does not fit."""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class MinAtarCNN(BaseFeaturesExtractor):
    """The MinAtar network's convolution (Young & Tian 2019; the one Graesser et al. 2022 sparsify): one 3x3
    convolution with 16 channels, stride 1, ReLU, flattened. Takes MinAtar's ``(10, 10, channels)``
    observations (channels last, as the ``minatar`` package's Gymnasium envs give them) or channels first.

    ``DQN(SparseCnnDQNPolicy, "MinAtar/Breakout-v1", policy_kwargs=dict(features_extractor_class=MinAtarCNN,
    net_arch=[128]))`` is their DQN, sparse.
    """

    def __init__(self, observation_space: spaces.Box, channels: int = 16) -> None:
        shape = observation_space.shape
        if shape is None or len(shape) != 3:
            raise ValueError(f"MinAtarCNN takes (height, width, channels) observations, got shape {shape}")
        self.channels_last = shape[-1] < shape[0]
        in_channels, height, width = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        super().__init__(observation_space, channels * (height - 2) * (width - 2))
        self.cnn = nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        x = observations.permute(0, 3, 1, 2) if self.channels_last else observations
        return self.cnn(x.float())
