"""folder: sources — nothing on disk is silently absent (links, loops, unreadable folders, special files)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from core.params import DataParams
from sources import folder as source_folder
from tests.helpers import noise_jpeg, write_file


def _collect(col: Path, images: Path) -> pd.DataFrame:
    rows = pd.DataFrame(source_folder.collect(DataParams(source=f"folder:{col}", per_source="all"), images))
    rows["rel"] = rows["origin"].str.split(f"{col.name}/", n=1).str[1]
    return rows.set_index("rel")


def test_links_loops_and_special_files_are_recorded(tmp_path: Path) -> None:
    col = tmp_path / "col"
    write_file(col / "real" / "a.jpg", noise_jpeg(1))
    write_file(col / "fake" / "g" / "b.jpg", noise_jpeg(2))
    write_file(tmp_path / "elsewhere" / "c.jpg", noise_jpeg(3))
    write_file(tmp_path / "outside_dir" / "d.jpg", noise_jpeg(4))
    (col / "real" / "link_to_file.jpg").symlink_to(tmp_path / "elsewhere" / "c.jpg")
    (col / "real" / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (col / "real" / "loop_up").symlink_to(col / "real")  # a folder link back to an ancestor
    (col / "real" / "self.jpg").symlink_to(col / "real" / "self.jpg")  # resolves to itself
    (col / "fake" / "g" / "linked_dir").symlink_to(tmp_path / "outside_dir")  # followed: d.jpg is listed
    (col / "fake" / "g" / "z_again").symlink_to(tmp_path / "outside_dir")  # the same folder, second in name order
    os.mkfifo(col / "real" / "pipe.jpg")  # a fifo: reading it would block the stage forever

    rows = _collect(col, tmp_path / "images")

    assert rows.loc["real/a.jpg", "status"] == "ok" and rows.loc["fake/g/b.jpg", "status"] == "ok"
    assert rows.loc["real/link_to_file.jpg", "status"] == "ok"
    assert rows.loc["fake/g/linked_dir/d.jpg", "status"] == "ok"
    assert rows.loc["fake/g/linked_dir/d.jpg", "generator"] == "g"
    expected = {
        "real/broken.jpg": "broken symbolic link",
        "real/loop_up": "symbolic link loop (leads back to real/)",
        "real/self.jpg": "symbolic link loop",
        "fake/g/z_again": "folder already listed as fake/g/linked_dir/",
        "real/pipe.jpg": "not a regular file",
    }
    for rel, reason in expected.items():
        assert rows.loc[rel, "status"] == "skipped", rel
        assert reason in rows.loc[rel, "reason"], (rel, rows.loc[rel, "reason"])
        assert rows.loc[rel, "path"] == ""
    assert rows.loc["fake/g/z_again", "label"] == "fake" and rows.loc["fake/g/z_again", "generator"] == "g"
    assert len(rows) == 4 + len(expected) and rows["id"].is_unique  # nothing more, nothing less


def test_unreadable_folder_is_recorded_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreadable folder, simulated in the scanner's one listing call (works as root too)."""
    col = tmp_path / "col"
    write_file(col / "real" / "a.jpg", noise_jpeg(1))
    write_file(col / "real" / "locked" / "hidden.jpg", noise_jpeg(2))
    write_file(col / "fake" / "genB" / "c.jpg", noise_jpeg(3))
    real_scandir = os.scandir
    locked = {str(col / "real" / "locked"), str(col / "fake" / "genB")}

    def scandir(path: os.PathLike[str] | str) -> object:
        if str(path) in locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(source_folder, "_scandir", scandir)
    rows = _collect(col, tmp_path / "images")
    assert rows.loc["real/a.jpg", "status"] == "ok"
    for rel, label, generator in (("real/locked", "real", "real"), ("fake/genB", "fake", "genB")):
        row = rows.loc[rel]
        assert row["status"] == "skipped" and row["label"] == label and row["generator"] == generator
        assert row["reason"].startswith("unreadable folder (Permission denied)")
    assert "real/locked/hidden.jpg" not in rows.index and len(rows) == 3


def test_unreadable_folder_is_recorded_chmod(tmp_path: Path) -> None:
    col = tmp_path / "col"
    write_file(col / "real" / "a.jpg", noise_jpeg(1))
    write_file(col / "real" / "locked" / "hidden.jpg", noise_jpeg(2))
    write_file(col / "fake" / "b.jpg", noise_jpeg(3))
    locked = col / "real" / "locked"
    locked.chmod(0)
    try:
        try:
            os.listdir(locked)
        except PermissionError:
            pass
        else:
            pytest.skip(
                "chmod 000 does not block reading here (running as root); "
                "test_unreadable_folder_is_recorded_simulated covers this case"
            )
        rows = _collect(col, tmp_path / "images")
    finally:
        locked.chmod(0o755)
    assert rows.loc["real/locked", "status"] == "skipped"
    assert "unreadable folder" in rows.loc["real/locked", "reason"]


def test_folder_source_errors_are_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "not_a_folder.zip"
    a_file.write_bytes(b"PK")
    with pytest.raises(source_folder.FolderLayoutError, match="is a file, not a folder"):
        source_folder.scan_folder(a_file)
    with pytest.raises(source_folder.FolderLayoutError, match="does not exist"):
        source_folder.scan_folder(tmp_path / "missing")
    write_file(tmp_path / "twice" / "Real" / "a.jpg", noise_jpeg(1))
    write_file(tmp_path / "twice" / "real" / "b.jpg", noise_jpeg(2))
    with pytest.raises(source_folder.FolderLayoutError, match=r"both Real/ and real/ exist"):
        source_folder.scan_folder(tmp_path / "twice")


def test_entries_outside_the_label_folders_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    col = tmp_path / "col"
    write_file(col / "real" / "a.jpg", noise_jpeg(1))
    write_file(col / "fake" / "b.jpg", noise_jpeg(2))
    write_file(col / "stray.jpg", noise_jpeg(3))
    write_file(col / "extras" / "c.jpg", noise_jpeg(4))
    files = source_folder.scan_folder(col)
    assert [f.rel for f in files] == ["real/a.jpg", "fake/b.jpg"]
    assert "ignoring 2 entries outside the label folders (extras, stray.jpg)" in capsys.readouterr().out
