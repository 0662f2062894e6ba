import json

import numpy as np
import pytest

from vectorgeo.errors import InvalidInputError, UnknownClassCodeError
from vectorgeo.legends import BUILTIN_LEGENDS, NODATA_INDEX, Legend, get_legend


def test_builtin_legends_have_the_product_class_counts():
    assert get_legend("lc100").n_classes == 23
    assert get_legend("WorldCover").n_classes == 11
    assert get_legend("lc100").codes[:3] == (0, 20, 30)
    assert get_legend("lc100").sea_codes == {200}


def test_codes_map_to_indices_by_position_and_nodata_to_255():
    lc = get_legend("lc100")
    codes = np.array([[0, 20, 200], [126, 255, 111]], dtype=np.uint8)
    out = lc.codes_to_indices(codes, nodata=255)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 1, 22], [21, NODATA_INDEX, 10]]


def test_unknown_codes_are_reported_not_mismapped():
    lc = get_legend("lc100")
    with pytest.raises(UnknownClassCodeError, match=r"\[13, 41\].*'lc100'"):
        lc.codes_to_indices(np.array([20, 13, 41, 41], dtype=np.uint8))
    with pytest.raises(UnknownClassCodeError, match=r"\[-5\]"):
        lc.codes_to_indices(np.array([-5, 20], dtype=np.int16))


def test_float_rasters_are_refused_with_a_hint():
    with pytest.raises(InvalidInputError, match="DEM"):
        get_legend("lc100").codes_to_indices(np.array([1.5]))


def test_csv_legend_file(tmp_path):
    path = tmp_path / "nlcd.csv"
    path.write_text(
        "code,name,color,sea\n11,Open water,#466b9f,0\n41,Deciduous forest,#68ab5f,\n90,Woody wetlands,#b8d9eb,\n"
    )
    legend = get_legend(str(path))
    assert legend.name == "nlcd"
    assert legend.codes == (11, 41, 90)
    assert legend.codes_to_indices(np.array([90, 11], dtype=np.uint8)).tolist() == [2, 0]


def test_json_legend_round_trip(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(BUILTIN_LEGENDS["worldcover"].to_dict()))
    assert get_legend(str(path)) == BUILTIN_LEGENDS["worldcover"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("code,label\n1,a\n", "'code' and 'name'"),
        ("code,name\nx,a\n", "line 2: code 'x'"),
        ("code,name\n1,a\n1,b\n", "repeats"),
    ],
)
def test_bad_csv_legends_name_the_problem(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=match):
        get_legend(str(path))


def test_unknown_legend_name():
    with pytest.raises(InvalidInputError, match="unknown legend 'corine'"):
        get_legend("corine")
    with pytest.raises(InvalidInputError, match="does not exist"):
        get_legend("/nope/legend.csv")


def test_legend_limits():
    with pytest.raises(InvalidInputError, match="at most 254"):
        Legend("big", tuple(range(300)), tuple(str(i) for i in range(300)))
