"""examples/kaggle_digits.ipynb, run top to bottom as a user would, on Kaggle-format CSVs of the bundled sample.

The notebook runs in a kernel of this Python (a kernel spec of our own, in a temporary folder), with its
parameters injected after the cell tagged ``parameters``, as papermill does. Figures are drawn by the
inline backend, the one Jupyter uses: it needs no display, and it renders every figure to a PNG, so a
plot that fails only when drawn fails here too (Agg would skip drawing them at ``plt.show()``).
"""

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpunet.files.data import load_sample

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs nbformat (pip install -e '.[dev]')")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs nbclient (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="the notebook test needs ipykernel (pip install -e '.[dev]')")
pytest.importorskip("matplotlib", reason="the notebook draws with matplotlib (pip install 'gpunet[plot]')")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "kaggle_digits.ipynb"
KERNEL = "gpunet-notebook-test"
CELL_TIMEOUT = 60  # seconds; the whole notebook takes a few on the digits below
TRAIN_DIGITS, TEST_DIGITS = 3000, 500
PARAMETERS = {"DATA": "train.csv.gz", "TEST": "test.csv", "EPOCHS": 3, "VAL_SIZE": 1000, "OUT": "submission.csv"}
PIXEL_COLUMNS = [f"pixel{i}" for i in range(784)]

# Run after the notebook, in its kernel: what the test checks of the kernel's state, as one JSON line.
# The held-out digits the notebook scores are the ones fit held out: fit is run again with the training
# loop replaced by one that hands back the validation set fit built, and stops.
CHECK_CELL = """\
import json, sys
import gpunet.training.loop
from sklearn.base import clone

class HeldOut(Exception):
    pass

def hand_back_validation_set(backend, train_set, val_set, *args, **kwargs):
    raise HeldOut(val_set)

real_train, gpunet.training.loop.train = gpunet.training.loop.train, hand_back_validation_set
try:
    clone(clf).fit(X, y)
except HeldOut as caught:
    fits_held_out = caught.args[0]
finally:
    gpunet.training.loop.train = real_train
print(json.dumps({
    "python": sys.executable,
    "epochs": len(clf.history_),
    "same_held_out_images": bool(np.array_equal(fits_held_out.images, X_val.to_numpy())),
    "same_held_out_labels": bool(np.array_equal(clf.classes_[fits_held_out.labels], y_val)),
}))
"""


@pytest.fixture(scope="module")
def kernel_manager_class(tmp_path_factory):
    """A kernel manager that knows one kernel spec: this very Python's, written in a temporary folder.

    A ``python3`` spec elsewhere (the user's, another environment's) may start another interpreter.
    """
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from traitlets import default

    folder = tmp_path_factory.mktemp("kernels")
    (folder / KERNEL).mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "gpunet test kernel",
        "language": "python",
        "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline",
                "GPUNET_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))},
    }
    (folder / KERNEL / "kernel.json").write_text(json.dumps(spec))

    class ThisPythonsKernel(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _only_the_test_kernel_spec(self):
            return KernelSpecManager(kernel_dirs=[str(folder)])

    return ThisPythonsKernel


@pytest.fixture(scope="module")
def sample_csvs(tmp_path_factory):
    """A Kaggle train.csv (gzipped) and test.csv of the bundled sample; returns (folder, test digits' labels)."""
    sample = load_sample()
    folder = tmp_path_factory.mktemp("kaggle")
    train = pd.DataFrame(sample.images[:TRAIN_DIGITS], columns=PIXEL_COLUMNS)
    train.insert(0, "label", sample.labels[:TRAIN_DIGITS])
    train.to_csv(folder / PARAMETERS["DATA"], index=False)
    test_rows = slice(TRAIN_DIGITS, TRAIN_DIGITS + TEST_DIGITS)
    pd.DataFrame(sample.images[test_rows], columns=PIXEL_COLUMNS).to_csv(folder / PARAMETERS["TEST"], index=False)
    return folder, sample.labels[test_rows]


def with_parameters(notebook, parameters: dict):
    """The notebook with a cell setting ``parameters`` after its ``parameters`` cell, as papermill injects them."""
    notebook = nbformat.from_dict(json.loads(json.dumps(notebook)))  # a copy
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, injected)
    return notebook


def execute(notebook, folder: Path, kernel_manager_class):
    """Run every cell in ``folder`` as the working directory; raises CellExecutionError at a failing cell.

    The client starts the kernel and, owning it, shuts it down and closes its sockets, failed or not.
    """
    client = nbclient.NotebookClient(notebook, kernel_name=KERNEL, kernel_manager_class=kernel_manager_class,
                                     timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(folder)}})
    client.execute()
    return notebook


def committed_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def stdout_of(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream" and out.name == "stdout")


@pytest.fixture(scope="module")
def executed(sample_csvs, kernel_manager_class):
    """The notebook run once on the sample CSVs, an older submission at OUT; returns (notebook, folder, labels)."""
    folder, test_labels = sample_csvs
    (folder / PARAMETERS["OUT"]).write_text("ImageId,Label\n1,3\n")  # an earlier submission: to be replaced
    notebook = with_parameters(committed_notebook(), PARAMETERS)
    notebook.cells.append(nbformat.v4.new_code_cell(CHECK_CELL))
    return execute(notebook, folder, kernel_manager_class), folder, test_labels


def test_the_committed_notebook_has_no_outputs_and_one_parameters_cell():
    notebook = committed_notebook()
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata.kernelspec.name == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), "clear the outputs"
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"


def test_the_test_sets_every_parameter_the_notebook_has():
    """Every name the parameters cell assigns is injected here (a new one would keep its real-data default)."""
    (cell,) = [cell for cell in committed_notebook().cells if "parameters" in cell.metadata.get("tags", [])]
    assigned = {target.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
                for target in node.targets}
    assert assigned == set(PARAMETERS)


def test_the_notebook_runs_in_this_python_with_the_injected_parameters(executed):
    notebook = executed[0]
    checks = json.loads(stdout_of(notebook.cells[-1]).strip().splitlines()[-1])
    assert Path(checks["python"]) == Path(sys.executable)
    assert checks["epochs"] == PARAMETERS["EPOCHS"]
    errors = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert errors == []


def test_the_held_out_digits_scored_are_the_ones_fit_held_out(executed):
    checks = json.loads(stdout_of(executed[0].cells[-1]).strip().splitlines()[-1])
    assert checks["same_held_out_images"] and checks["same_held_out_labels"]


def test_every_plot_is_drawn(executed):
    plotting = [cell for cell in executed[0].cells if cell.cell_type == "code" and "plt.show()" in cell.source]
    assert len(plotting) == 4  # digits, learning curves, confusion matrix, mistakes
    for cell in plotting:
        pngs = [out for out in cell.outputs if out.output_type == "display_data" and "image/png" in out.data]
        assert len(pngs) == 1, f"cell {cell.id!r} drew {len(pngs)} PNG figures"


def test_the_submission_is_kaggles_format_in_test_csvs_order(executed):
    folder, test_labels = executed[1], executed[2]
    path = folder / PARAMETERS["OUT"]
    assert path.read_text().splitlines()[0] == "ImageId,Label"
    submission = pd.read_csv(path)
    assert list(submission.columns) == ["ImageId", "Label"] and len(submission) == TEST_DIGITS  # replaced the old one
    assert list(submission.ImageId) == list(range(1, TEST_DIGITS + 1))
    assert submission.Label.dtype.kind == "i" and set(submission.Label) <= set(range(10))
    # 3 epochs on 2,000 digits score about 85% on new digits; rows out of test.csv's order would score about 10%.
    assert np.mean(submission.Label.to_numpy() == test_labels) > 0.7


@pytest.mark.parametrize("trouble", ["OUT is another file", "TEST is missing", "VAL_SIZE is 0"])
def test_bad_parameters_stop_the_notebook_before_training_and_keep_the_users_file(trouble, sample_csvs, tmp_path,
                                                                                  kernel_manager_class):
    folder, _ = sample_csvs
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    parameters = {**PARAMETERS, "DATA": str(folder / PARAMETERS["DATA"]), "TEST": str(folder / PARAMETERS["TEST"])}
    if trouble == "OUT is another file":
        parameters["OUT"] = str(notes)
        expected = f"{notes}: exists and is not a Kaggle submission"
    elif trouble == "TEST is missing":
        parameters["TEST"] = str(tmp_path / "test.csv")
        expected = f"{tmp_path / 'test.csv'}: no such file"
    else:
        parameters["VAL_SIZE"] = 0
        expected = "VAL_SIZE = 0: the plots below need held-out digits"
    notebook = with_parameters(committed_notebook(), parameters)
    with pytest.raises(nbclient.exceptions.CellExecutionError) as failure:
        execute(notebook, tmp_path, kernel_manager_class)
    assert expected in failure.value.evalue
    fit = next(cell for cell in notebook.cells if cell.cell_type == "code" and ".fit(" in cell.source)
    assert fit.execution_count is None, "the notebook trained before refusing"
    assert notes.read_text() == "my notes\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]  # no submission written


# Issue 17, finding 21: the notebook failed as shipped (FileNotFoundError: train.csv.gz), and what it needs
# (nbclient, ipykernel, matplotlib) was in no extra the README names.

def test_the_notebook_runs_as_shipped_on_the_bundled_sample(tmp_path, kernel_manager_class):
    """Run in a folder without Kaggle's files, parameters untouched: it trains on the sample and writes OUT."""
    notebook = execute(committed_notebook(), tmp_path, kernel_manager_class)
    errors = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert errors == []
    sample = load_sample()
    submission = pd.read_csv(tmp_path / "submission.csv")
    assert list(submission.ImageId) == list(range(1, 1001))  # the sample's last 1,000 digits
    # 30 epochs on 9,000 digits score above 90% on new digits; rows out of order would score about 10%.
    assert np.mean(submission.Label.to_numpy() == sample.labels[10_000:]) > 0.85
    assert sorted(path.name for path in tmp_path.iterdir()) == ["submission.csv"]


def notebook_imports() -> set[str]:
    """The top-level modules the notebook's code cells import."""
    modules = set()
    for cell in committed_notebook().cells:
        if cell.cell_type == "code":
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom):
                    modules.add(node.module.split(".")[0])
    return modules


def requirement_names(requirements) -> set[str]:
    import re

    return {re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_the_readme_names_an_extra_that_holds_what_the_notebook_needs():
    import tomllib

    root = NOTEBOOK.parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    readme = (root / "README.md").read_text()
    paragraph = next(p for p in readme.split("\n\n") if p.startswith("`examples/kaggle_digits.ipynb`"))
    assert 'pip install -e ".[notebook]"' in paragraph
    extra = requirement_names(project["optional-dependencies"]["notebook"])
    assert {"matplotlib", "nbclient", "ipykernel"} <= extra  # to draw, and a kernel and runner to run it in
    distributions = {"sklearn": "scikit-learn"}
    core = requirement_names(project["dependencies"]) | {"gpunet"}
    missing = {module for module in notebook_imports() - set(sys.stdlib_module_names)
               if distributions.get(module, module) not in core | extra}
    assert missing == set()
