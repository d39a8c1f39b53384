"""The teaching notebooks in notebooks/: each one runs headless from top to bottom, and the
committed files carry no outputs.

Execution uses nbclient with the `python3` kernel (ipykernel), the working directory
notebooks/, a 120 s timeout per cell and MPLBACKEND=Agg; a cell that raises fails the test
with nbclient's message (the cell's source and traceback). Nothing is written back: the
executed copy lives in memory. Install what this needs with `pip install -e ".[notebooks]"`.

The notebooks commit without outputs so that diffs stay readable and nothing stale is shown;
to strip a notebook after running it in Jupyter, clear all outputs before saving (or use
`jupyter nbconvert --clear-output --inplace notebooks/NAME.ipynb`).
"""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds per cell; each notebook runs in well under a minute on 2 cores


def test_the_notebooks_are_there():
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_quantization_basics.ipynb",
        "02_dynamic_boundary.ipynb",
        "03_svd_fc_layers.ipynb",
        "04_paper_end_to_end.ipynb",
        "05_bit_exact_integer.ipynb",
        "06_other_peoples_int8_models.ipynb",
    ], f"notebooks/ holds {names}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        (index, len(cell.outputs), cell.execution_count)
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells with outputs or an execution count (cell index, outputs, execution_count): "
        f"{dirty[:5]}; clear the outputs before committing"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("MPLBACKEND", "Agg")  # inherited by the kernel: no display needed
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError, naming the cell, when a cell fails
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"


# ------------------------------------------------------------ sqref.plots, which the notebooks use


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def lenet5_models():
    import sqref
    from sqref.data import DATA_DIR
    from sqref.qmodel import quantize_model

    model = sqref.load(DATA_DIR / "lenet5.h5")
    return model, quantize_model(model, bits=3, rule="max"), quantize_model(model, bits=3, rule="dynamic")


def _saved_png(fig, path):
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return fig


def test_plots_weight_histograms(lenet5_models, tmp_path):
    from sqref import plots

    model, _, dynamic = lenet5_models
    fig = _saved_png(plots.weight_histograms(model, dynamic, path=tmp_path / "h.png"), tmp_path / "h.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == [t for t in titles if "3-bit, dynamic" in t] and len(titles) == 4, titles
    with pytest.raises(ValueError, match="no quantized layer"):
        plots.weight_histograms(model, model)


def test_plots_layer_errors(lenet5_models, tmp_path):
    from sqref import plots

    model, max_rule, dynamic = lenet5_models
    fig = plots.layer_errors(model, {"max": max_rule, "dynamic": dynamic}, path=tmp_path / "e.png")
    _saved_png(fig, tmp_path / "e.png")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["conv1", "conv2", "fc1", "fc2"]
    plots.layer_errors(model, dynamic, metric="mse")
    with pytest.raises(ValueError, match="metric"):
        plots.layer_errors(model, dynamic, metric="snr")


def test_plots_mse_vs_alpha(tmp_path):
    import numpy as np

    from sqref import plots

    w = np.random.default_rng(0).laplace(size=2000)
    fig = plots.mse_vs_alpha(w, [2, 4, 8], points=20, path=tmp_path / "m.png")
    _saved_png(fig, tmp_path / "m.png")
    assert fig.axes[0].get_xlabel() == "clipping boundary alpha / max|w|"
    with pytest.raises(ValueError, match="unknown rules"):
        plots.mse_vs_alpha(w, [4], rules=("dynamic",))


def test_plots_accuracy_curves(tmp_path):
    from sqref import plots

    rows = [{"label": "a", "ratio": 4.0, "accuracy": 0.98}, {"label": "a", "ratio": 14.0, "accuracy": 0.97, "note": "r64"},
            {"label": "b", "ratio": 8.0, "accuracy": 0.5}]
    fig = plots.accuracy_curves(rows, baseline=0.985, path=tmp_path / "a.png", ylim=(90, 100))
    _saved_png(fig, tmp_path / "a.png")
    assert [line.get_label() for line in fig.axes[0].get_lines()][:2] == ["a", "b"]
    with pytest.raises(ValueError, match="fraction"):
        plots.accuracy_curves([{"label": "a", "ratio": 4.0, "accuracy": 98.0}])
