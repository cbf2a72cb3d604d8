"""How each MNIST setup trains a model (torch-free, so that el-reproduce's options can show the defaults).

- ``el-plugins``: el-plugins' own CPU setup of ``el-reproduce mnist`` (SmallCNN, Adam, one-cycle, 5 epochs);
- ``paper``: the authors' Tables 1/4/13 setup (``mnist&ood&additive_large-margin-softmax/train_mnist.py``:
  MNISTNet, SGD lr 0.1 momentum 0.9, x0.1 at epoch 51 and x0.01 from 65, 100 epochs, batch 256, the best
  test epoch);
- ``table11``: the authors' Table 11 setup (``adversarial_robustness/demos/attack.py``: Table11CNN, Adam at a
  constant 1e-3, batch 128, 5 epochs, no shuffling), for ``el-reproduce mnist-table11``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict


@dataclass(frozen=True)
class Recipe:
    """How a setup trains one model: the network (a key of :data:`NETWORKS`), the optimiser, the learning-rate
    schedule ('one_cycle': 15% warm-up then cosine, stepped per batch; 'constant'; 'paper_steps': the authors'
    :func:`paper_step_lr`, set per epoch), the defaults of the command's --epochs / --batch-size / --lr, whether
    every epoch visits the training images in a new random order or in the stored one, and whether the test
    accuracy is measured after every epoch (the paper reports each run's best epoch)."""
    label: str
    network: str
    optimizer: str
    schedule: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    shuffle: bool = True
    best_test_epoch: bool = False

    def describe(self, epochs: int, batch_size: int, lr: float) -> str:
        if self.optimizer == "adam":
            optimizer = "Adam"
        else:
            optimizer = f"SGD, momentum {self.momentum}"
        schedule = {"one_cycle": f"one-cycle learning rate (peak {lr}, 15% warm-up, cosine)",
                    "constant": f"constant learning rate {lr}",
                    "paper_steps": f"learning rate {lr}, x0.1 at epoch 51 and x0.01 from epoch 65 (the authors')"}
        return (f"{optimizer}, {schedule[self.schedule]}, batch {batch_size}, {epochs} epoch{'s' if epochs > 1 else ''}, "
                f"{'shuffled' if self.shuffle else 'the training images in their stored order (no shuffling)'}; "
                f"no augmentation, no weight decay" + ("; test accuracy after every epoch, the best one reported"
                                                       if self.best_test_epoch else ""))


RECIPES = {
    "el-plugins": Recipe("el-plugins' own CPU setup", "SmallCNN", "adam", "one_cycle", epochs=5, batch_size=128, lr=3e-3),
    "paper": Recipe("the authors' Tables 1/4/13 setup", "MNISTNet", "sgd", "paper_steps", epochs=100, batch_size=256,
                    lr=0.1, momentum=0.9, best_test_epoch=True),
    "table11": Recipe("the authors' Table 11 setup", "Table11CNN", "adam", "constant", epochs=5, batch_size=128, lr=1e-3,
                      shuffle=False),
}
SETUPS = ("el-plugins", "paper")  # el-reproduce mnist --setup; table11 is el-reproduce mnist-table11's
ATTACK_IMAGES = {"el-plugins": 500, "paper": 0}  # mnist's --attack-images default: Table 11 used another network


def paper_step_lr(base_lr: float, epoch: int) -> float:
    """The authors' MNIST schedule (their adjust_learning_rate) at 1-based ``epoch``: base_lr for epochs 1-50,
    base_lr / 10 for 51-64, base_lr / 100 from 65 on."""
    if epoch >= 65:
        return base_lr * 0.01
    if epoch > 50:
        return base_lr * 0.1
    return base_lr


@dataclass
class TrainingSettings:
    """What every MNIST run records and :func:`el_evidence.reproduce.mnist.train` reads: the setup (a key of
    :data:`RECIPES`) with its epochs, batch size and learning rate, EL's log_end, the label smoothing of the +LS
    variants, how many images, where it runs (threads 0: not on the CPU), whether it is a --quick smoke run and
    what else the command records (``extra``)."""
    setup: str = "el-plugins"
    epochs: int = RECIPES["el-plugins"].epochs
    batch_size: int = RECIPES["el-plugins"].batch_size
    lr: float = RECIPES["el-plugins"].lr
    log_end: float = 1.0
    smoothing: float = 0.1
    train_images: int = 60000
    test_images: int = 10000
    attack_images: int = ATTACK_IMAGES["el-plugins"]
    device: str = "cpu"
    threads: int = 1
    quick: bool = False
    extra: Dict = field(default_factory=dict)
