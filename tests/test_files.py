"""towerlite.files: the atomic folder swap every stage uses to put a built folder in place."""

from __future__ import annotations

from towerlite.files import replace_dir


def _built(folder, text):
    folder.mkdir()
    (folder / "f.txt").write_text(text)
    return folder


def test_replace_dir_puts_a_new_folder_in_place(tmp_path):
    final = tmp_path / "out"
    assert replace_dir(_built(tmp_path / ".out.staging", "new"), final) == final
    assert (final / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_dir_replaces_the_old_folder_and_deletes_it(tmp_path):
    final = _built(tmp_path / "out", "old")
    (final / "only-in-old.txt").write_text("")
    stale = _built(tmp_path / ".out.old", "a killed run's leftover")
    replace_dir(_built(tmp_path / ".out.staging", "new"), final)
    assert sorted(p.name for p in final.iterdir()) == ["f.txt"]  # the whole folder, not merged
    assert (final / "f.txt").read_text() == "new"
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
