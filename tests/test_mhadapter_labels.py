"""Label readers (GSS layout and path,label CSV), the fixed class mapping and the stratified split."""

from __future__ import annotations

from collections import Counter

import pytest

from classify.labels import LabelFileError, read_gss_split, read_labels, read_path_label_csv, stratified_split
from classify.schema import ATTRIBUTES


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_gss_img_path_layout_maps_raw_values_onto_the_schema(tmp_path):
    _write(tmp_path / "train" / "glare.csv", "uuid,img_path,glare\nu1,img/1/u1.jpeg,True\nu2,img/2/u2.jpeg,no\n"
                                              "u3,img/2/u3.jpeg, Yes \n")
    _write(tmp_path / "test" / "glare.csv", "img_path,glare\nimg/3/u4.jpeg,False\n")
    train = read_gss_split(tmp_path, ATTRIBUTES["glare"], "train")
    test = read_labels(tmp_path, ATTRIBUTES["glare"], "test")
    assert train.labels == (1, 0, 1) and test.labels == (0,)  # one mapping for both splits (MHA-P7, P8)
    assert train.files[0] == str(tmp_path / "img/1/u1.jpeg") and train.image_ids == ("u1", "u2", "u3")


def test_gss_uuid_layout_resolves_images_through_an_index(tmp_path):
    for folder, uuid in (("1", "aa"), ("7", "bb")):
        _write(tmp_path / "img" / folder / f"{uuid}.jpeg", "x")
    _write(tmp_path / "train" / "lighting_condition.csv", "uuid,lighting_condition\nbb,dusk/dawn\naa,Day\n")
    data = read_gss_split(tmp_path, ATTRIBUTES["lighting_condition"])
    assert data.labels == (1, 0)
    assert data.files == (str(tmp_path / "img/7/bb.jpeg"), str(tmp_path / "img/1/aa.jpeg"))
    _write(tmp_path / "train" / "weather.csv", "uuid,weather\ncc,clear\n")
    with pytest.raises(LabelFileError, match="row 2: no image for uuid 'cc'"):
        read_gss_split(tmp_path, ATTRIBUTES["weather"])


def test_unknown_label_names_file_row_and_value(tmp_path):
    csv = _write(tmp_path / "mine.csv", "path,label\na.jpg,clear\nb.jpg,sunny-ish\n")
    with pytest.raises(LabelFileError) as info:
        read_path_label_csv(csv, ATTRIBUTES["weather"])
    message = str(info.value)
    assert str(csv) in message and "row 3" in message and "'sunny-ish'" in message


def test_missing_columns_and_files_are_clear_errors(tmp_path):
    with pytest.raises(LabelFileError, match="'path,label'"):
        read_path_label_csv(_write(tmp_path / "x.csv", "file,class\na,b\n"), ATTRIBUTES["weather"])
    _write(tmp_path / "gss" / "train" / "quality.csv", "img_path,label\na,good\n")
    with pytest.raises(LabelFileError, match="no column 'quality'"):
        read_gss_split(tmp_path / "gss", ATTRIBUTES["quality"])
    with pytest.raises(LabelFileError, match="does not exist"):
        read_gss_split(tmp_path / "gss", ATTRIBUTES["weather"])


def test_path_label_csv_resolves_relative_paths(tmp_path):
    csv = _write(tmp_path / "sub" / "labels.csv", "path,label\nimgs/a.jpg,perspective\n/abs/b.jpg,spherical\n")
    data = read_path_label_csv(csv, ATTRIBUTES["pano_status"])
    assert data.files == (str(tmp_path / "sub" / "imgs/a.jpg"), "/abs/b.jpg")
    assert data.labels == (0, 1) and data.image_ids == ("a", "b")


def test_stratified_split_is_seeded_per_class_with_a_val_image_each():
    labels = [0] * 50 + [1] * 7 + [2] * 2 + [3]
    train, val = stratified_split(labels, 0.2, seed=42)
    assert sorted(train + val) == list(range(len(labels))) and not set(train) & set(val)
    counts = Counter(labels[i] for i in val)
    assert counts == {0: 10, 1: 1, 2: 1}  # 20% rounded, at least one; a single image stays in train
    assert stratified_split(labels, 0.2, seed=42) == (train, val)
    assert stratified_split(labels, 0.2, seed=7) != (train, val)
