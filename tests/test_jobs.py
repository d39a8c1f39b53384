"""The jobs behind the commands (sqref.jobs), called from Python: they return the same
figures the CLI prints, write files that say what they hold, and validate before working."""
import dataclasses
import json
import os

import pytest

import sqref
from sqref.cli import main
from sqref.data import DATA_DIR
from sqref.hdf5 import file_sha256
from sqref.jobs.compress import CompressResult, QuantizeResult, compress_file, quantize_file
from sqref.jobs.models import EvalResult, InfoResult, describe_file, evaluate_file

LENET300 = str(DATA_DIR / "lenet300.h5")


def run_json(capsys, *args):
    code = main([*map(str, args), "--json", "-q"])
    return code, json.loads(capsys.readouterr().out)


def test_quantize_file_matches_the_cli_and_records_its_own_accuracy(tmp_path, capsys):
    r = quantize_file(LENET300, output=tmp_path / "q.h5", bits=4, per_channel=True)
    assert isinstance(r, QuantizeResult) and r.output == os.fspath(tmp_path / "q.h5")
    code, cli = run_json(capsys, "quantize", LENET300, "--bits", "4", "--per-channel", "-o", tmp_path / "c.h5")
    assert code == 0 and capsys.readouterr().err == ""
    assert cli["quality"] == r.quality and cli["total"]["payload_ratio"] == r.total["payload_ratio"]
    assert [row["alpha_range"] for row in cli["layers"]] == [row["alpha_range"] for row in r.layers]
    meta = sqref.load(r.output).meta
    assert meta["settings"] == {"command": "quantize", "bits": 4, "rule": "dynamic", "per_channel": True,
                                "scheme": "symmetric", "rounding": "half_even", "bias_bits": 32}
    assert meta["source"]["file"] == "lenet300.h5" and meta["source"]["sha256"] == file_sha256(LENET300)
    assert "test_accuracy" not in meta and "val_accuracy" not in meta  # the float model's figures moved
    assert meta["source"]["test_accuracy"] == sqref.load(LENET300).meta["test_accuracy"]
    assert meta["evaluation"]["measured"] and meta["evaluation"]["accuracy"] == r.quality["compressed_accuracy"]
    assert evaluate_file(r.output).accuracy == r.quality["compressed_accuracy"]


def test_compress_file_without_eval_is_silent_and_says_nothing_was_measured(tmp_path, capsys):
    r = compress_file(LENET300, output=tmp_path / "c.h5", rank=20, bits="8,fc1.v=4", evaluate=False)
    assert capsys.readouterr().err == ""  # progress=False by default
    assert isinstance(r, CompressResult) and r.quality is None and r.rank_search is None
    assert set(r.timing) == {"svd_seconds", "finetune_seconds", "quantize_seconds", "evaluate_seconds"}
    assert {row["name"]: row["rank"] for row in r.layers}["fc1.v"] == 20
    meta = sqref.load(r.output).meta
    assert meta["evaluation"] == {"measured": False}
    assert meta["settings"]["rank"] == 20 and meta["settings"]["bits"] == "8,fc1.v=4"
    assert meta["settings"]["max_drop"] is None and meta["settings"]["finetune"] is None
    assert meta["source"]["sha256"] == file_sha256(LENET300)
    assert r.total["payload_ratio"] == round(r.total["payload_ratio"], 2)
    # the same job from the CLI: the same file figures
    code, cli = run_json(capsys, "compress", LENET300, "--rank", "20", "--bits", "8,fc1.v=4", "--no-eval",
                         "-o", tmp_path / "d.h5")
    assert code == 0 and cli["total"] == {**r.total, "file_bytes": cli["total"]["file_bytes"],
                                          "file_ratio": cli["total"]["file_ratio"]}
    assert cli["layers"] == r.layers and cli["settings"] == r.settings


def test_info_shows_how_each_layer_is_quantized(tmp_path, capsys):
    r = quantize_file(LENET300, output=tmp_path / "q.h5", bits=6, per_channel=True, rounding="half_away",
                      rule="sigma", evaluate=False)
    info = describe_file(r.output)
    assert isinstance(info, InfoResult) and info.total["payload_ratio"] == r.total["payload_ratio"]
    code, cli = run_json(capsys, "info", r.output)
    assert code == 0
    fc1 = next(row for row in cli["layers"] if row["name"] == "fc1")
    assert (fc1["kind"], fc1["weight_shape"], fc1["bits"]) == ("linear", [300, 784], 6)
    assert (fc1["scheme"], fc1["per_channel"], fc1["rounding"], fc1["rule"]) == ("symmetric", True, "half_away", "sigma")
    assert len(fc1["alpha"]) == 300 and fc1["alpha_range"] == [min(fc1["alpha"]), max(fc1["alpha"])]
    assert main(["info", r.output]) == 0
    text = capsys.readouterr().out
    assert "half_away" in text and "channel" in text and "sigma" in text and ".." in text
    assert "accuracy: not measured" in text


def test_evaluate_file_is_what_eval_prints(capsys):
    r = evaluate_file(LENET300, split="val")
    assert isinstance(r, EvalResult) and r.count == 500
    code, cli = run_json(capsys, "eval", LENET300, "--split", "val")
    assert code == 0 and {k: v for k, v in cli.items() if k != "seconds"} == \
        {k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"}


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, "rank 0: expected a positive integer"),
    ({"rank": 5, "energy": 0.9}, "expected at most one SVD rank option"),
    ({"svd": False, "rank": 5}, "an SVD rank option, but svd=False"),
    ({"rule": "nope"}, "rule 'nope': expected one of"),
    ({"finetune_epochs": 1, "evaluate": False}, "cannot be combined with evaluate=False"),
    ({"distill": (4, 0.9)}, "distillation is a fine-tuning method"),
    ({"bits": "8,fc9=4"}, "'fc9' in bits spec"),
    ({"output": LENET300}, "is the input file"),
])
def test_compress_file_rejects_bad_input_before_writing(kwargs, message, tmp_path):
    kwargs = {"output": tmp_path / "x.h5", **kwargs}
    with pytest.raises(ValueError, match=None) as info:
        compress_file(LENET300, **kwargs)
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_jobs_on_user_data_match_the_cli_and_say_which_data(tmp_path, capsys):
    """A .npy without labels: quantize and eval report the agreement with the float model, and
    the file written records the data file, its SHA-256 and the split seed."""
    import numpy as np

    from sqref.data import load_split

    x, _ = load_split(split="test")
    np.save(tmp_path / "x.npy", x[:300])
    r = quantize_file(LENET300, output=tmp_path / "q.h5", bits=3, data=tmp_path / "x.npy")
    code, cli = run_json(capsys, "quantize", LENET300, "--bits", "3", "--data", tmp_path / "x.npy",
                         "-o", tmp_path / "c.h5")
    assert code == 0 and cli["quality"] == r.quality and r.quality["split"] == "all"
    assert r.quality["compressed_accuracy"] is None and 0 < r.quality["agreement"] < 1
    meta = sqref.load(r.output).meta
    assert meta["data_source"] == {**meta["data_source"], "file": "x.npy", "sha256": file_sha256(tmp_path / "x.npy"),
                                   "format": "npy", "labels": False}
    assert meta["data_source"]["split"]["seed"] == 0
    e = evaluate_file(r.output, data=tmp_path / "x.npy", reference=LENET300)
    assert e.agreement == r.quality["agreement"] and e.logit_sqnr_db == r.quality["logit_sqnr_db"]
    code, cli = run_json(capsys, "eval", r.output, "--data", tmp_path / "x.npy", "--reference", LENET300)
    assert code == 0 and {k: v for k, v in cli.items() if k != "seconds"} == \
        {k: v for k, v in dataclasses.asdict(e).items() if k != "seconds"}


def test_compress_file_without_labels_searches_the_rank_on_agreement(tmp_path):
    import numpy as np

    from sqref.data import load_split

    x, _ = load_split(split="test")
    np.savez(tmp_path / "x.npz", x=x[:400])
    r = compress_file(LENET300, output=tmp_path / "c.h5", data=tmp_path / "x.npz", max_drop=3, split_seed=5,
                      rule="max")
    assert r.rank_search["criterion"] == "agreement" and r.rank_search["chosen_rank"] is not None
    last = r.rank_search["tried"][-1]
    assert last["rank"] == r.rank_search["chosen_rank"] and 100 * (1 - last["val_agreement"]) <= 3
    assert r.quality["count"] == 80 and r.quality["labels"] is False
    meta = sqref.load(r.output).meta
    assert meta["rank_search"]["criterion"] == "agreement" and meta["data_source"]["split"]["seed"] == 5
