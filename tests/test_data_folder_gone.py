"""A real-data run whose data folder was moved, and a split that lists nothing: one clear line each."""

from __future__ import annotations

import pytest

from exbl_core.data import DataError, load_entries


def test_a_moved_data_folder_is_named_as_such_not_as_a_missing_mask(make_database, tmp_path):
    root = make_database(per_class=2)
    moved = root.rename(tmp_path / "elsewhere")
    assert moved.is_dir()
    with pytest.raises(DataError, match="the data folder is not there") as info:
        load_entries(root, [(0, "COVID/images/COVID-1.png")], 32)
    assert "mask" not in str(info.value)


def test_an_empty_split_says_it_lists_no_images(make_database):
    with pytest.raises(DataError, match="this split lists no images"):
        load_entries(make_database(per_class=2), [], 32)
