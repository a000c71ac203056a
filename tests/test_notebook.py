"""examples/tour.ipynb runs top to bottom (nbclient, a real kernel) and is stored without outputs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

TOUR = Path(__file__).resolve().parent.parent / "examples" / "tour.ipynb"


def test_the_tour_is_stored_without_outputs():
    nb = nbformat.read(TOUR, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_the_tour_runs_top_to_bottom(mnist_root, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("LENET_DATA_ROOT", str(mnist_root))  # the kernel inherits the environment
    monkeypatch.setenv("LENET_OFFLINE", "1")
    nb = nbformat.read(TOUR, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - start
    assert seconds < 300, f"the tour took {seconds:.0f} s"  # about a minute on a quiet 2-core machine
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "test accuracy" in text and "C1 6@28x28" in text and "output 10" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 7  # digits, curves, mistakes, three explain pictures, steps, attribution
    assert (tmp_path / "runs" / "tour" / "explain" / "my_digit" / "attribution.png").is_file()
