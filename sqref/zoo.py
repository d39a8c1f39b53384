"""Model architectures with seeded random initialisation.

lenet5    the Caffe LeNet-5 of Deep Compression: conv 20@5x5, max-pool 2,
          conv 50@5x5, max-pool 2, FC 800->500, ReLU, FC 500->10 (431,080 params)
lenet300  LeNet-300-100: FC 784->300->100->10 with ReLU (266,610 params)
small_vgg 3x32x32; conv 32,32,pool,64,64,pool,128,128,pool; FC 2048->256->10
          (benchmarks only: random weights say nothing about accuracy)

Weights are He-normal (std sqrt(2 / fan_in)), biases zero, float32; the
LeNets' fully-connected weights start FC_INIT_SCALE times smaller. Why: with
only 3,500 training images the random part of an He-initialised 800x500
layer survives training (weight decay removes a fraction lr*wd per step,
far too little in a few thousand steps), so the layer stays full rank and
truncated SVD cuts into it. Gradient descent from a small initialisation
learns a low-rank layer instead (its updates are sums of outer products
that concentrate in a few directions), which is what SVD compression
presumes of a well-trained FC layer. The choice is a training recipe, stated
here and in each shipped model's meta.
"""
from __future__ import annotations

import numpy as np

from sqref.model import Conv2d, Flatten, Linear, MaxPool2d, Model, ReLU

FC_INIT_SCALE = 0.1


def _conv(rng, k, c, size, padding=0):
    w = rng.standard_normal((k, c, size, size)) * np.sqrt(2.0 / (c * size * size))
    return Conv2d(w.astype(np.float32), np.zeros(k, np.float32), (1, 1), (padding, padding), (1, 1), 1)


def _fc(rng, n_in, n_out, scale=1.0):
    w = rng.standard_normal((n_out, n_in)) * (scale * np.sqrt(2.0 / n_in))
    return Linear(w.astype(np.float32), np.zeros(n_out, np.float32))


def lenet5(seed: int = 0, fc_init_scale: float = FC_INIT_SCALE) -> Model:
    rng = np.random.default_rng(seed)
    pool = MaxPool2d((2, 2), (2, 2))
    layers = (_conv(rng, 20, 1, 5), pool, _conv(rng, 50, 20, 5), pool, Flatten(),
              _fc(rng, 800, 500, fc_init_scale), ReLU(), _fc(rng, 500, 10, fc_init_scale))
    names = ("conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "relu", "fc2")
    return Model(layers, (1, 28, 28), names, {"arch": "lenet5"})


def lenet300(seed: int = 0, fc_init_scale: float = FC_INIT_SCALE) -> Model:
    rng = np.random.default_rng(seed)
    layers = (Flatten(), _fc(rng, 784, 300, fc_init_scale), ReLU(), _fc(rng, 300, 100, fc_init_scale), ReLU(),
              _fc(rng, 100, 10, fc_init_scale))
    names = ("flatten", "fc1", "relu1", "fc2", "relu2", "fc3")
    return Model(layers, (1, 28, 28), names, {"arch": "lenet300"})


def small_vgg(seed: int = 0) -> Model:
    rng = np.random.default_rng(seed)
    layers, channels = [], 3
    for width in (32, 64, 128):
        for _ in range(2):
            layers += [_conv(rng, width, channels, 3, padding=1), ReLU()]
            channels = width
        layers.append(MaxPool2d((2, 2), (2, 2)))
    layers += [Flatten(), _fc(rng, 2048, 256), ReLU(), _fc(rng, 256, 10)]
    return Model(tuple(layers), (3, 32, 32), meta={"arch": "small_vgg"})


ARCHITECTURES = {"lenet5": lenet5, "lenet300": lenet300, "small_vgg": small_vgg}

# The recipes that trained the shipped models (`sqref train --arch NAME`
# uses them unless overridden). Chosen on the validation split only.
RECIPES = {
    "lenet5": {"epochs": 50, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 32,
               "max_shift": 2, "keep": "last"},
    "lenet300": {"epochs": 60, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64,
                 "max_shift": 2, "keep": "last"},
}


def alexnet(seed: int = 0) -> Model:
    """AlexNet-shaped (single tower, no groups, 3x227x227, 62.4M parameters), random weights:
    for size accounting and scale tests only."""
    rng = np.random.default_rng(seed)
    pool = MaxPool2d((3, 3), (2, 2))
    conv1 = _conv(rng, 96, 3, 11)
    conv1 = Conv2d(conv1.weight, conv1.bias, (4, 4), (0, 0), (1, 1), 1)
    layers = (conv1, ReLU(), pool, _conv(rng, 256, 96, 5, padding=2), ReLU(), pool,
              _conv(rng, 384, 256, 3, padding=1), ReLU(), _conv(rng, 384, 384, 3, padding=1), ReLU(),
              _conv(rng, 256, 384, 3, padding=1), ReLU(), pool, Flatten(),
              _fc(rng, 9216, 4096), ReLU(), _fc(rng, 4096, 4096), ReLU(), _fc(rng, 4096, 1000))
    return Model(layers, (3, 227, 227), meta={"arch": "alexnet", "weights": "random (structure only)"})


def vgg16(seed: int = 0) -> Model:
    """VGG-16-shaped (3x224x224, 138.4M parameters), random weights: for size
    accounting and scale tests only."""
    rng = np.random.default_rng(seed)
    layers, channels = [], 3
    for width, repeats in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(repeats):
            layers += [_conv(rng, width, channels, 3, padding=1), ReLU()]
            channels = width
        layers.append(MaxPool2d((2, 2), (2, 2)))
    layers += [Flatten(), _fc(rng, 25088, 4096), ReLU(), _fc(rng, 4096, 4096), ReLU(), _fc(rng, 4096, 1000)]
    return Model(tuple(layers), (3, 224, 224), meta={"arch": "vgg16", "weights": "random (structure only)"})


STRUCTURAL = {"alexnet": alexnet, "vgg16": vgg16}
