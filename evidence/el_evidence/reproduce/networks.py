"""The MNIST networks of el-reproduce: el-plugins' own small CNN and the authors' two networks.

Every network takes images in [0, 1] of shape (N, 1, 28, 28) and returns logits (N, 10), so that the
attacks work in pixel space; those trained on normalised inputs normalise inside ``forward``.

- :class:`SmallCNN`: el-plugins' own CPU setup (``el-reproduce mnist``), 105,866 parameters.
- :class:`MNISTNet`: the authors' Table 1 / 4 / 13 network (``mnist&ood&additive_large-margin-softmax/
  models.py``, the L-Softmax code's MNIST net with margin 1), 522,125 parameters.
- :class:`Table11CNN`: the authors' Table 11 network (``adversarial_robustness/demos/models.py``,
  torchattacks' MNIST demo CNN), 123,222 parameters, no normalisation.
"""
from __future__ import annotations

import torch
import torch.nn as nn

MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics (the usual normalisation, the authors' for MNISTNet)


class SmallCNN(nn.Module):
    """conv3x3(16)-ReLU-maxpool, conv3x3(32)-ReLU-maxpool, linear(1568, 64)-ReLU, linear(64, 10); 106k parameters

    Takes images in [0, 1] (N, 1, 28, 28) and normalises them itself, so that attacks work in pixel space.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((x - MEAN) / STD))


def _conv_prelu_bn(in_channels: int, padding: int) -> list:
    return [nn.Conv2d(in_channels, 64, 3, padding=padding), nn.PReLU(), nn.BatchNorm2d(64)]


class MNISTNet(nn.Module):
    """The authors' MNIST network (Tables 1, 4, 13): input BatchNorm, conv3x3(64) without padding + PReLU + BN,
    then 3, 4 and 3 blocks of conv3x3(64, padding 1) + PReLU + BN with a 2x2 max-pool after each group,
    Linear(576, 256) + BatchNorm1d and a bias-free 256 -> 10 head; 522,125 parameters.

    The head is their ``LSoftmaxLinear`` at margin 1, which is ``x @ W`` in training and evaluation alike, with
    ``W`` Kaiming-normal initialised (fan-in 256). The authors normalise the images with the MNIST mean and std
    before the network; this module does it in ``forward``, on images in [0, 1].
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers = [nn.BatchNorm2d(1), *_conv_prelu_bn(1, padding=0)]
        for blocks in (3, 4, 3):
            for _ in range(blocks):
                layers += _conv_prelu_bn(64, padding=1)
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(576, 256), nn.BatchNorm1d(256))
        self.head = nn.Linear(256, num_classes, bias=False)
        nn.init.kaiming_normal_(self.head.weight)  # (10, 256): fan-in 256, as LSoftmaxLinear's weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.features((x - MEAN) / STD)))


class Table11CNN(nn.Module):
    """The authors' Table 11 network (torchattacks' MNIST demo CNN): conv5x5(16)-ReLU, conv5x5(32)-ReLU-maxpool,
    conv5x5(64)-ReLU-maxpool, Linear(576, 100)-ReLU-Linear(100, 10); no BatchNorm, no dropout, inputs in
    [0, 1] unnormalised; 123,222 parameters."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.ReLU(),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 3 * 3, 100), nn.ReLU(), nn.Linear(100, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


NETWORKS = {"SmallCNN": SmallCNN, "MNISTNet": MNISTNet, "Table11CNN": Table11CNN}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(name: str) -> str:
    """'Name: the first paragraph of its docstring' (one line, no final period), for results.json."""
    return f"{name}: " + " ".join(NETWORKS[name].__doc__.split("\n\n")[0].split()).rstrip(".")
