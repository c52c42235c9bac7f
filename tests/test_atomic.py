"""sim.atomic: the one temporary-file-then-rename writer every result file goes through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sim.atomic import atomic_path, save_figure, write_bytes_atomic, write_text_atomic


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_write_text_and_bytes_leave_only_the_target(tmp_path):
    t = write_text_atomic(tmp_path / "a.md", "héllo\nworld\n")
    b = write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01\xff")
    assert t == tmp_path / "a.md" and b == tmp_path / "b.bin"
    assert (tmp_path / "a.md").read_bytes() == "héllo\nworld\n".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01\xff"
    # overwriting replaces the content and still leaves no temporary file
    write_text_atomic(str(tmp_path / "a.md"), "second")
    assert (tmp_path / "a.md").read_text(encoding="utf-8") == "second"
    assert _names(tmp_path) == ["a.md", "b.bin"]


def test_temporary_name_is_hidden_in_the_same_folder_and_keeps_the_suffix(tmp_path):
    with atomic_path(tmp_path / "fig.png") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".fig.png.") and tmp.name.endswith(".tmp.png")
        assert tmp.exists() and not (tmp_path / "fig.png").exists()
        tmp.write_bytes(b"x")
    assert _names(tmp_path) == ["fig.png"]


def test_error_inside_leaves_target_untouched_and_no_temporary_file(tmp_path):
    p = tmp_path / "result.json"
    p.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(p) as tmp:
        tmp.write_text("half-writ", encoding="utf-8")
        raise RuntimeError("boom")
    assert p.read_text(encoding="utf-8") == "old"
    assert _names(tmp_path) == ["result.json"]
    # same for a target that did not exist yet: nothing appears
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "new.csv") as tmp:
        tmp.write_text("a,b\n", encoding="utf-8")
        raise KeyboardInterrupt
    assert _names(tmp_path) == ["result.json"]


def test_save_figure_writes_a_png(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    p = save_figure(fig, tmp_path / "plot.png", dpi=50, bbox_inches="tight")
    assert p == tmp_path / "plot.png"
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _names(tmp_path) == ["plot.png"]


def test_parent_folder_is_created(tmp_path):
    deep = tmp_path / "x" / "y" / "z"
    write_text_atomic(deep / "out.txt", "ok")
    assert (deep / "out.txt").read_text(encoding="utf-8") == "ok"
    with atomic_path(tmp_path / "p" / "q" / "w.bin") as tmp:
        tmp.write_bytes(b"1")
    assert (tmp_path / "p" / "q" / "w.bin").read_bytes() == b"1"
    assert _names(deep) == ["out.txt"]


def test_written_files_get_the_ordinary_file_mode(tmp_path):
    from sim.atomic import FILE_MODE

    p = write_text_atomic(tmp_path / "a.txt", "x")
    assert (p.stat().st_mode & 0o777) == FILE_MODE
