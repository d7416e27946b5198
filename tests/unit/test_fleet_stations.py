"""`flts run --dataset`: which stations a run takes, and what inference says it serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from flts_cli.fleet import DatasetError, available_datasets, resolve_datasets, served_run_ids
from flts_cli.main import main


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for name in ("PobleSec", "LesCorts", "ElBorn"):
        (tmp_path / f"{name}.csv").write_text("time\n")
        (tmp_path / f"{name}_test.csv").write_text("time\n")
    # A train CSV without its test split is no dataset; neither is a stray file.
    (tmp_path / "Orphan.csv").write_text("time\n")
    (tmp_path / "README.md").write_text("")
    return tmp_path


def test_a_dataset_is_a_csv_with_its_test_split(data: Path) -> None:
    assert available_datasets(data) == ["ElBorn", "LesCorts", "PobleSec"]
    assert available_datasets(data / "absent") == []


def test_one_name_a_list_and_all(data: Path) -> None:
    assert resolve_datasets("PobleSec", data) == ("PobleSec",)
    assert resolve_datasets(" PobleSec, LesCorts ,ElBorn", data) == ("PobleSec", "LesCorts", "ElBorn")
    assert resolve_datasets("all", data) == ("ElBorn", "LesCorts", "PobleSec")
    assert resolve_datasets("ALL", data) == ("ElBorn", "LesCorts", "PobleSec")


def test_duplicates_count_once_in_the_order_first_given(data: Path) -> None:
    assert resolve_datasets("LesCorts,PobleSec,LesCorts,,PobleSec", data) == ("LesCorts", "PobleSec")


def test_unknown_dataset_is_refused_listing_the_available_ones(data: Path) -> None:
    with pytest.raises(DatasetError) as refused:
        resolve_datasets("PobleSec,NoSuchSite,Orphan", data)
    message = str(refused.value)
    assert "unknown dataset NoSuchSite, Orphan" in message
    assert "holds ElBorn, LesCorts, PobleSec" in message and "`all`" in message


def test_empty_list_and_all_of_an_empty_folder_are_refused(tmp_path: Path, data: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset named"):
        resolve_datasets(" , ", data)
    with pytest.raises(DatasetError, match=r"no <name>\.csv"):
        resolve_datasets("all", tmp_path / "empty")


def test_flts_run_refuses_an_unknown_dataset_before_starting_anything(
    data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("DATA_DIR", str(data))
    code = main(["run", "--dataset", "PobleSec,Nowhere", "--report-dir", str(tmp_path / "report")])
    assert code == 2
    assert "unknown dataset Nowhere" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_served_run_ids_reads_the_fleet_shape() -> None:
    body = {
        "status": "ready",
        "models": {"PobleSec": {"run_id": "r-p", "model_type": "GRU"}, "LesCorts": {"run_id": "r-l"}},
        "failed": {"ElBorn": {"run_id": "r-e", "error": "boom"}},
    }
    # A failed load is not served.
    assert served_run_ids(body) == {"PobleSec": "r-p", "LesCorts": "r-l"}


def test_served_run_ids_reads_the_single_model_shape() -> None:
    assert served_run_ids({"status": "ready", "identifier": "PobleSec", "run_id": "r-p"}) == {
        "PobleSec": "r-p"
    }


@pytest.mark.parametrize(
    "body",
    [
        None,
        {},
        {"status": "loading"},
        {"detail": "no model loaded"},
        {"models": None},
        {"models": {"X": "r"}},
    ],
)
def test_an_answer_of_neither_shape_serves_nothing_yet(body: dict[str, object] | None) -> None:
    assert served_run_ids(body) == {}
