"""config_table shows dataclass configs side by side, one row per field."""

from dataclasses import dataclass

import pytest

from bigmodel_course.plotting import config_table
from bigmodel_course.vision_models import ViTConfig


@dataclass
class _Small:
    lr: float = 1e-3
    steps: int = 10
    corpus: str | None = None


def test_config_table_rows_are_fields_and_columns_are_configs():
    t = config_table({"甲": _Small(), "乙": _Small(lr=2e-4, corpus="reviews")})
    assert t.headers == ["字段", "甲", "乙"]
    assert t.rows == [["lr", "0.001", "0.0002"], ["steps", "10", "10"], ["corpus", "None", "reviews"]]


def test_config_table_merges_different_dataclasses_and_marks_missing_fields():
    t = config_table({"ViT": ViTConfig(), "小": _Small()})
    names = [row[0] for row in t.rows]
    assert names[:3] == ["image_size", "patch_size", "in_channels"] and names[-3:] == ["lr", "steps", "corpus"]
    assert dict((row[0], row[2]) for row in t.rows)["patch_size"] == "—"
    assert dict((row[0], row[1]) for row in t.rows)["patch_size"] == str(ViTConfig().patch_size)


def test_config_table_rejects_non_dataclasses():
    with pytest.raises(ValueError, match="no configs"):
        config_table({})
    with pytest.raises(ValueError, match="not a dataclass instance"):
        config_table({"x": {"lr": 1}})
    with pytest.raises(ValueError, match="not a dataclass instance"):
        config_table({"x": _Small})
