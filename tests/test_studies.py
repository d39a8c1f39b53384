"""The greedy per-layer bit search behind the paper study's "beyond the paper"
rows, the keep-rule study's promise not to read the test split, and
`sqref study --update`: generated sections are replaced between their
markers and the hand-written text around them is kept byte for byte."""
import inspect
import os

import numpy as np
import pytest

import sqref
from sqref.compress import factor_model
from sqref.data import DATA_DIR, load_split
from sqref.model import predict
from sqref.cli import main
from sqref.crossfit import KEEP_RULES
from sqref.studies import STUDIES, results
from sqref.studies import finetune as studies
from sqref.studies.common import payload_ratio
from sqref.studies.paper import greedy_bits, per_layer_bits


@pytest.fixture(scope="module")
def setting():
    model = sqref.load(DATA_DIR / "lenet300.h5")
    val = load_split(split="val")
    return factor_model(model, rank=30)[0], val, predict(model, val[0])


def test_max_drop_rule_stays_within_the_budget(setting):
    factored, val, float_val = setting
    bits, qm = greedy_bits(factored, val, float_val, max_drop=0.5, bias_bits=16)
    drop = 100 * (np.mean(float_val == val[1]) - np.mean(predict(qm, val[0]) == val[1]))
    assert drop <= 0.5
    assert min(bits.values()) < 8  # it did lower something


def test_target_ratio_rule_reaches_the_ratio(setting):
    factored, val, float_val = setting
    bits, qm = greedy_bits(factored, val, float_val, target_ratio=40.0, bias_bits=16)
    assert payload_ratio(qm) >= 40.0
    assert {layer.quant.bits for layer in qm.layers if getattr(layer, "quant", None)} == set(bits.values())


def test_exactly_one_stopping_rule(setting):
    factored, val, float_val = setting
    with pytest.raises(ValueError, match="exactly one"):
        greedy_bits(factored, val, float_val, max_drop=0.5, target_ratio=40.0)


def test_per_layer_bits_rejects_an_unknown_rule(setting):
    factored, val, _ = setting
    with pytest.raises(ValueError, match="rule must be one of max ratio, best accuracy at 50x, got 'fastest'"):
        per_layer_bits(factored, "fastest", val, progress=False)


def test_finetune_keep_study_reads_validation_only(monkeypatch):
    # a reduced run (one seed, two epochs, two halvings): every rule gets a row, the pick is
    # one of them, and the test split is never asked for (its cells run in this process)
    real = studies.data_split

    def no_test(split):
        assert split != "test", "the keep-rule study read the test split"
        return real(split)

    monkeypatch.setattr(studies, "data_split", no_test)
    monkeypatch.setattr(studies, "SELECT_SEEDS", (0,))
    monkeypatch.setattr(studies, "SELECT_SETTING", (20, "2,conv1=4", 2))
    monkeypatch.setattr(studies, "CROSSFIT_SPLITS", 2)
    text = studies.finetune_keep_study(progress=False)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| keep rule")]
    assert [row.split(" | ")[0][2:] for row in rows] == list(KEEP_RULES)
    pick = text.split("Pick: **")[1].split("**")[0]
    assert pick in KEEP_RULES
    assert "then bits **2,conv1=4 (111.7x)**" in text or "then bits **2,conv1=4,fc2=4 (103.4x)**" in text


def test_pick_margins_literal():
    # two runs; a run scores a rule by the mean of its halvings' first column (acc - float)
    cells = [[["a", [[0.010, 0.99, 3], [0.030, 0.99, 4]]], ["b", [[0.000, 0.98, 30], [0.000, 0.98, 30]]]],
             [["a", [[0.000, 0.99, 5], [0.000, 0.99, 5]]], ["b", [[0.004, 0.98, 30], [0.004, 0.98, 30]]]]]
    # margins a - b in points: +2.0 and -0.4; mean 0.8, s = 1.697056, t_{0.975, 1} = 12.706205: half 15.248
    text = studies.pick_margins("a", cells)
    assert "(2 runs: allocation x seed)" in text and "b +0.80 (-14.45 to +16.05)" in text
    assert "a +" not in text  # the pick is not compared with itself
    assert studies.pick_margins("a", cells[:1]) == "One run: no interval for the pick's margin."


def test_every_study_is_silent_by_default():
    for name, study in STUDIES.items():
        assert inspect.signature(study).parameters["progress"].default is False, name


# --- sqref study --update: a fake study keeps these tests fast ------------------------------------------------

HAND = "# results\r\n\nWritten by hand, kept byte for byte: tabs\t, trailing spaces   \n\n"
PAGE = (HAND + "<!-- sqref study fake: begin -->\n## Old table\n\n| a |\n|---|\n| 1 |\n\n"
        "<!-- sqref study fake: end -->\n\nMore hand-written text \u00e9, no newline at the end")


@pytest.fixture
def fake(monkeypatch):
    """A study 'fake' that records the progress flag it was given."""
    calls = []

    def fake_study(progress=False):
        calls.append(progress)
        return "## New table\n\n| a |\n|---|\n| 2 |\n"

    monkeypatch.setitem(STUDIES, "fake", fake_study)
    return calls


def write(tmp_path, text):
    path = tmp_path / "results.md"
    path.write_bytes(text.encode())
    return path


def test_update_replaces_only_the_marked_section(tmp_path, fake):
    path = write(tmp_path, PAGE)
    assert main(["study", "fake", "--update", str(path), "-q"]) == 0
    after = path.read_bytes().decode()
    before_head, _, rest = PAGE.partition("<!-- sqref study fake: begin -->\n")
    _, _, tail = rest.partition("<!-- sqref study fake: end -->\n")
    assert after == (before_head + "<!-- sqref study fake: begin -->\n## New table\n\n| a |\n|---|\n| 2 |\n\n"
                     "<!-- sqref study fake: end -->\n" + tail)
    assert after.startswith(HAND) and after.endswith("More hand-written text \u00e9, no newline at the end")
    assert fake == [False]  # -q: no progress
    assert main(["study", "fake", "--update", str(path), "-q"]) == 0
    assert path.read_bytes().decode() == after  # idempotent


def test_update_a_labelled_copy(tmp_path, fake):
    page = PAGE + "\n<!-- sqref study fake OPENBLAS_NUM_THREADS=2: begin -->\nold\n\n" \
                  "<!-- sqref study fake OPENBLAS_NUM_THREADS=2: end -->\n"
    path = write(tmp_path, page)
    assert main(["study", "fake", "--update", str(path), "--label", "OPENBLAS_NUM_THREADS=2"]) == 0
    after = path.read_bytes().decode()
    assert after.startswith(PAGE) and "| 2 |" in after and "old" not in after
    assert fake == [True]  # progress on unless -q


@pytest.mark.parametrize("page, message", [
    (HAND + "no markers at all\n", "no '<!-- sqref study fake: begin -->' ... 'end -->' markers; marked: none"),
    (HAND + "<!-- sqref study fake: begin -->\n| 1 |\n", "line 5: section 'fake' has no end marker"),
    (HAND + "| 1 |\n<!-- sqref study fake: end -->\n", "line 6: end of 'fake' without its begin marker"),
    (HAND + "<!-- sqref study fake: begin -->\n<!-- sqref study other: begin -->\n",
     "line 6: begin of 'other' inside section 'fake' (opened at line 5)"),
    (HAND + "<!-- sqref study fake: begin -->\n<!-- sqref study other: end -->\n",
     "line 6: end of 'other' without its begin marker (section 'fake' is open)"),
    (HAND + "<!-- sqref study fake begin -->\n", "line 5: malformed marker"),
    (PAGE + "\n<!-- sqref study fake: begin -->\n<!-- sqref study fake: end -->\n", "section 'fake' is marked twice"),
])
def test_bad_markers_fail_in_one_line_and_leave_the_file_untouched(tmp_path, fake, capsys, page, message):
    path = write(tmp_path, page)
    stamp = os.stat(path).st_mtime_ns
    assert main(["study", "fake", "--update", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sqref: error: {path}: ") and message in err, err
    assert path.read_bytes() == page.encode() and os.stat(path).st_mtime_ns == stamp
    assert fake == []  # checked before the study runs
    assert sorted(os.listdir(tmp_path)) == ["results.md"]  # no temporary file left


def test_output_refuses_to_overwrite_a_page_with_markers(tmp_path, fake, capsys):
    path = write(tmp_path, PAGE)
    assert main(["study", "fake", "-o", str(path), "--force"]) == 2
    assert "has sqref study markers: use --update" in capsys.readouterr().err
    assert path.read_bytes() == PAGE.encode()


def test_output_with_force_writes_a_file_that_is_not_there_yet(tmp_path, fake, capsys):
    path = tmp_path / "new.md"  # --force allows a replacement; it does not require a file to replace
    assert main(["study", "fake", "-o", str(path), "--force"]) == 0
    assert path.read_text().startswith("<!-- sqref study fake: begin -->\n## New table")


def test_a_new_page_can_be_updated(tmp_path, fake, monkeypatch, capsys):
    # `all` on a fresh file: the header, then every section between its markers; then --update finds them
    calls = []
    monkeypatch.setattr("sqref.cli.study.STUDIES", {
        "one": lambda progress=False: calls.append("one") or "## One\n", "fake": STUDIES["fake"]})
    path = tmp_path / "page.md"
    assert main(["study", "all", "-o", str(path)]) == 0
    assert "sqref study 1/2: one\nsqref study 2/2: fake\n" in capsys.readouterr().err
    text = path.read_text()
    assert text.startswith(results.RESULTS_HEADER)
    assert list(results.find_sections(text)) == ["one", "fake"]
    assert main(["study", "one", "--update", str(path)]) == 0
    assert path.read_text() == text


def test_label_needs_update():
    assert main(["study", "clipping", "--label", "x"]) == 2


def test_which_studies_run_on_a_cluster():
    # a study runs on a Dask cluster once it takes workers and scheduler (sqref.parallel.run_tasks);
    # structural measures time and memory, so it never does
    assert results.distributed_studies(STUDIES) == [name for name in STUDIES if name != "structural"]
    with pytest.raises(ValueError, match="study 'structural' runs in-process only: it measures the wall time"):
        results.run_studies({"structural": STUDIES["structural"]}, workers=2)

