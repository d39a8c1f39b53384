"""`sqref compress` and `sqref quantize` end to end on the shipped LeNet-300-100
(small and fast), checked against `sqref info` and `sqref eval` run separately."""
import json
import os

import numpy as np
import pytest

import sqref
from sqref.model import layer_arrays
from sqref.cli import main
from sqref.compress import factor_model
from sqref.data import DATA_DIR
from sqref.model import Conv2d, Flatten, Model, ReLU

LENET300 = str(DATA_DIR / "lenet300.h5")


def run_json(capsys, *args):
    code = main([*map(str, args), "--json", "-q"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_compress_report_agrees_with_info_and_eval(tmp_path, capsys):
    out = tmp_path / "c.h5"
    code, report, _ = run_json(capsys, "compress", LENET300, "--rank", "30", "--bits", "6", "-o", out)
    assert code == 0
    code, info, _ = run_json(capsys, "info", out)
    assert code == 0
    for key in ("original_bytes", "payload_bytes", "payload_ratio", "file_bytes", "file_ratio"):
        assert info["total"][key] == report["total"][key], key
    assert report["total"]["file_bytes"] == os.path.getsize(out)
    code, ev, _ = run_json(capsys, "eval", out)
    assert ev["accuracy"] == report["quality"]["compressed_accuracy"]
    code, ev_float, _ = run_json(capsys, "eval", LENET300)
    assert ev_float["accuracy"] == report["quality"]["float_accuracy"]


def test_compressed_file_reloads_to_the_same_outputs(tmp_path):
    from sqref.qmodel import quantize_model

    model = sqref.load(LENET300)
    compressed = quantize_model(factor_model(model, rank=25)[0], bits="3,fc3=8", per_channel=True)
    sqref.save(compressed, tmp_path / "c.h5")
    loaded = sqref.load(tmp_path / "c.h5")
    # the file round trip itself is exact: every weight, bias and code, bit for bit
    for before, after in zip(compressed.layers, loaded.layers):
        for name, a in layer_arrays(before).items():
            assert layer_arrays(after)[name].tobytes() == a.tobytes(), name
        if getattr(before, "quant", None) is not None:
            assert np.asarray(after.quant.codes).tobytes() == np.asarray(before.quant.codes).tobytes()
    # The outputs are float32 GEMMs over equal arrays in different memory: a BLAS may pick another
    # kernel (blocking, summation order) for another alignment, so they agree to float32 rounding,
    # not bit for bit (5.7e-6 apart on an AVX-512 machine for logits of magnitude ~10).
    x = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(sqref.run(loaded, x), sqref.run(compressed, x), rtol=1e-5, atol=1e-5)


def test_quantize_cli_table_and_json(tmp_path, capsys):
    out = tmp_path / "q.h5"
    assert main(["quantize", LENET300, "--bits", "4", "-o", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    for word in ("alpha/max|w|", "SQNR dB", "payload", "file", "agreement"):
        assert word in text
    code, report, _ = run_json(capsys, "quantize", LENET300, "--bits", "conv=8,fc=4", "-o", tmp_path / "q2.h5")
    assert code == 0 and {r["bits"] for r in report["layers"]} == {4}


def test_model_without_fc_layer_skips_svd_and_goes_on(tmp_path, capsys):
    rng = np.random.default_rng(0)
    model = Model((Conv2d(rng.standard_normal((10, 1, 28, 28)).astype(np.float32), np.zeros(10, np.float32)),
                   ReLU(), Flatten()), (1, 28, 28))
    sqref.save(model, tmp_path / "conv.h5")
    assert main(["compress", str(tmp_path / "conv.h5"), "--rank", "5", "-o", str(tmp_path / "o.h5"), "-q"]) == 0
    assert "no fully-connected layer; SVD step skipped" in capsys.readouterr().out
    assert (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("args, message", [
    (["--rank", "0"], "expected a positive integer, got '0'"),
    (["--energy", "1.5"], "expected a fraction in (0, 1], got '1.5'"),
    (["--energy", "0"], "expected a fraction in (0, 1], got '0'"),
    (["--bits", "9"], "bits must be in [2, 8], got 9"),
    (["--bits", "fc=1"], "'1'"),
    (["--bits", "8,fc9=4"], "'fc9' in bits spec"),
    (["--no-svd", "--bits", "8,fc1.v=4"], "'fc1.v' in bits spec"),  # no SVD: there is no factor fc1.v
    (["-o", LENET300], "is the input file"),
    (["-o", "/nonexistent-dir/x.h5"], "does not exist"),
    (["--finetune", "1", "--distill", "4,2"], "expected T,ALPHA with T > 0 and ALPHA in [0, 1], or none; got '4,2'"),
    (["--finetune", "1", "--distill", "0,0.5"], "got '0,0.5'"),
    (["--distill", "4,0.9"], "--distill 4,0.9: distillation is a fine-tuning method; add --finetune EPOCHS"),
    (["--finetune-keep", "last"], "--finetune-keep last: it says which fine-tuning epoch to keep; add --finetune EPOCHS"),
    (["--finetune", "1", "--finetune-keep", "first"], "invalid choice: 'first' (choose from 'best', 'best-latest', 'last')"),
])
def test_compress_bad_input_is_one_clear_line(args, message, capsys, tmp_path):
    argv = ["compress", LENET300, *args]
    if "-o" not in args:
        argv += ["-o", str(tmp_path / "x.h5")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()
    assert os.listdir(tmp_path) == []  # nothing half-written


def test_bits_may_name_the_svd_factors(capsys, tmp_path):
    # the paper study prints settings like "fc1.v=3,fc1.u=4": compress must accept them
    code, report, _ = run_json(capsys, "compress", LENET300, "--rank", "30", "--bits", "8,fc1.v=3,fc2=4",
                               "-o", tmp_path / "x.h5")
    assert code == 0
    bits = {r["name"]: r["bits"] for r in report["layers"]}
    assert bits["fc1.v"] == 3 and bits["fc1.u"] == 8 and bits["fc2.v"] == bits["fc2.u"] == 4 and bits["fc3"] == 8


def test_rank_past_min_dimension_is_kept_whole_and_reported(capsys, tmp_path):
    code, report, _ = run_json(capsys, "compress", LENET300, "--rank", "400", "-o", tmp_path / "x.h5")
    assert code == 0
    assert all(r["kept_whole"] for r in report["svd"])
    assert "break-even" in report["svd"][0]["reason"]


def test_plot_option_writes_both_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "q.png"
    assert main(["quantize", LENET300, "--bits", "3", "-o", str(tmp_path / "q.h5"), "--plot", str(plot), "-q",
                 "--no-eval"]) == 0
    for path in (plot, tmp_path / "q-errors.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["quantize", LENET300, "-o", str(tmp_path / "r.h5"), "--plot", str(tmp_path / "x.jpg")]) == 2
    assert "expected a .png file name" in capsys.readouterr().err


def test_factoring_a_graph_rewires_its_readers():
    """SVD of a graph's classifier: fc.v reads what fc read, the output becomes fc.u."""
    from sqref import zoo

    model = zoo.resnet_mini(0)
    factored, reports = factor_model(model, rank=4, only=["fc"])
    assert factored.outputs == ("fc.u",) and not factored.is_chain
    assert factored.wiring[factored.names.index("fc.v")] == model.wiring[model.names.index("fc")]
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    _, inter = sqref.run(model, x, return_intermediates=True)
    v, u = (factored.layers[factored.names.index(n)] for n in ("fc.v", "fc.u"))
    assert sqref.run(factored, x).tobytes() == u(v(inter["pool"])).tobytes()


def test_1x1_convolutions_factor_into_two_1x1_convolutions():
    """A 1x1 convolution is a matrix at every pixel: with a rank-2 weight, rank-2 factors
    reproduce it up to float32 rounding of the SVD (a few ulps of the output's scale)."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((12, 2)) @ rng.standard_normal((2, 10))).astype(np.float32)[:, :, None, None]
    conv = Conv2d(w, rng.standard_normal(12).astype(np.float32), stride=(2, 2))
    model = Model((conv, ReLU()), (10, 6, 6))
    with pytest.raises(ValueError, match="no linear layer named conv1"):
        factor_model(model, rank=2, only=["conv1"])
    factored, reports = factor_model(model, rank=2, conv_1x1=True)
    v, u = factored.layers[:2]
    assert (factored.names[:2], v.weight.shape, u.weight.shape) == (("conv1.v", "conv1.u"), (2, 10, 1, 1), (12, 2, 1, 1))
    assert v.stride == (2, 2) and v.bias is None and u.stride == (1, 1)
    x = rng.random((2, 10, 6, 6), dtype=np.float32)
    want = sqref.run(model, x)
    np.testing.assert_allclose(sqref.run(factored, x), want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert reports[0]["rank"] == 2 and reports[0]["relative_error"] < 1e-6
