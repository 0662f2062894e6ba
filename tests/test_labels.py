"""Label files in: GeoJSON points and polygons, CSV of cells or points; one clear error per bad label."""

from __future__ import annotations

import json

import h3.api.basic_int as h3i
import numpy as np
import pytest

from vectorgeo.errors import InvalidInputError
from vectorgeo.labels import check_footprint, parse_labels, read_labels

RES = 8
LAT, LNG = 44.6, -123.9


def _point(lat, lng, label, prop="class"):
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lng, lat]}, "properties": {prop: label}}


def _square(lat, lng, half_deg, label):
    ring = [[lng - half_deg, lat - half_deg], [lng + half_deg, lat - half_deg], [lng + half_deg, lat + half_deg],
            [lng - half_deg, lat + half_deg], [lng - half_deg, lat - half_deg]]  # fmt: skip
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {"class": label}}


def _geojson(*features) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": list(features)}).encode()


def _parse(data: bytes, name="labels.geojson", **kw):
    return parse_labels(data, name, h3_resolution=RES, **kw)


def test_points_label_the_cell_that_holds_them():
    points = [_point(LAT + 0.05 * i, LNG, "forest") for i in range(3)] + [_point(LAT, LNG + 0.05 * i, "urban")
                                                                            for i in range(1, 3)]  # fmt: skip
    labels = _parse(_geojson(*points))
    assert labels.classes == ("forest", "urban")
    assert labels.counts() == {"forest": 3, "urban": 2}
    expected = h3i.latlng_to_cell(LAT + 0.05, LNG, RES)
    assert expected in labels.h3.tolist()
    assert labels.label[labels.h3.tolist().index(expected)] == 0
    assert labels.h3.dtype == np.uint64 and (np.diff(labels.h3.astype(np.float64)) > 0).all()
    assert len(labels.sha256) == 64


def test_a_polygon_labels_every_cell_whose_centre_is_inside():
    square = _square(LAT, LNG, 0.03, "wetland")
    labels = _parse(_geojson(square, _point(LAT + 0.2, LNG, "urban"), _point(LAT + 0.25, LNG, "urban")))
    wetland = labels.h3[labels.label == labels.classes.index("wetland")]
    ring = square["geometry"]["coordinates"][0]
    expected = {h3i.latlng_to_cell(lat, lng, RES) for lat in np.linspace(LAT - 0.03, LAT + 0.03, 60)
                for lng in np.linspace(LNG - 0.03, LNG + 0.03, 60)}  # fmt: skip
    inside = {
        c for c in expected if abs(h3i.cell_to_latlng(c)[0] - LAT) < 0.03 and abs(h3i.cell_to_latlng(c)[1] - LNG) < 0.03
    }
    assert set(wetland.tolist()) == inside and len(inside) > 20
    assert ring[0] == ring[-1]


def test_a_tiny_polygon_still_labels_one_cell():
    labels = _parse(_geojson(_square(LAT, LNG, 1e-5, "quarry"), _square(LAT + 0.1, LNG, 1e-5, "quarry"),
                             _point(LAT, LNG + 0.2, "x"), _point(LAT, LNG + 0.25, "x")))  # fmt: skip
    assert labels.counts()["quarry"] == 2


def test_csv_by_cell_and_by_point(tmp_path):
    a, b = h3i.latlng_to_cell(LAT, LNG, RES), h3i.latlng_to_cell(LAT + 0.1, LNG, RES)
    child = h3i.cell_to_center_child(h3i.latlng_to_cell(LAT + 0.2, LNG, RES), RES + 2)
    path = tmp_path / "l.csv"
    path.write_text(f"h3,label\n{h3i.int_to_str(a)},crop\n{h3i.int_to_str(b)},crop\n{h3i.int_to_str(child)},town\n"
                    f"{h3i.int_to_str(h3i.latlng_to_cell(LAT + 0.3, LNG, RES))},town\n")  # fmt: skip
    labels = read_labels(path, h3_resolution=RES)
    assert labels.counts() == {"crop": 2, "town": 2}
    assert h3i.cell_to_parent(child, RES) in labels.h3.tolist()  # a finer cell labels its ancestor
    points = tmp_path / "p.csv"
    points.write_text(f"lat,lng,kind\n{LAT},{LNG},a\n{LAT + 0.1},{LNG},a\n{LAT + 0.2},{LNG},b\n{LAT + 0.3},{LNG},b\n")
    labels = read_labels(points, h3_resolution=RES, class_property="kind")
    assert labels.classes == ("a", "b") and labels.source == str(points)


@pytest.mark.parametrize(
    ("data", "name", "match"),
    [
        (_geojson(_point(LAT, LNG, "a", prop="kind")), "l.geojson", "has no property 'class'.*--class_property"),
        (_geojson(_point(LAT, LNG, "  "), _point(LAT, LNG, "a")), "l.geojson", "empty class"),
        (_geojson(_point(LAT, LNG, None)), "l.geojson", "class must be a name"),
        (
            _geojson(_point(LAT, LNG, "a"), _point(LAT + 0.1, LNG, "a"), _point(LAT + 0.2, LNG, "b")),
            "l.geojson",
            r"\{'b': 1\} have fewer than 2",
        ),
        (_geojson(_point(LAT, LNG, "a"), _point(LAT + 0.1, LNG, "a")), "l.geojson", "one class"),
        (_geojson(_point(LAT, LNG, "a"), _point(LAT + 1e-6, LNG, "b")), "l.geojson", "one cell takes one class"),
        (_geojson(_point(LNG, LAT + 100, "a")), "l.geojson", r"not \[lng, lat\]"),
        (b"{not json", "l.geojson", "not valid JSON"),
        (b'{"type": "Point"}', "l.geojson", "FeatureCollection"),
        (
            _geojson(
                {
                    "type": "Feature",
                    "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
                    "properties": {"class": "a"},
                }
            ),
            "l.geojson",
            "LineString",
        ),
        (b"h3,label\nnot-a-cell,a\n", "l.csv", "line 2.*not an H3 cell"),
        (b"h3,label\n-1,a\n", "l.csv", "line 2.*not an H3 cell"),
        (
            b'{"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}, "properties": ["class"]}',
            "l.geojson",
            "properties must be a JSON object",
        ),
        (
            _geojson(
                {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": []}, "properties": {"class": "a"}}
            ),
            "l.geojson",
            "empty MultiPoint",
        ),
        (
            _geojson(
                {
                    "type": "Feature",
                    "properties": {"class": "a"},
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [[[170, 0], [-170, 0], [-170, 1], [170, 1], [170, 0]]],
                    },
                }
            ),
            "l.geojson",
            "antimeridian",
        ),
        (
            _geojson(
                {
                    "type": "Feature",
                    "properties": {"class": "a"},
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [[[-120, 30], [-100, 30], [-100, 45], [-120, 45], [-120, 30]]],
                    },
                }
            ),
            "l.geojson",
            "at most 1,000,000",
        ),
        (b"lat,lng,label\nx,1,a\n", "l.csv", "line 2.*must be numbers"),
        (b"lat,label\n1,a\n", "l.csv", "needs 'h3', or 'lat' and 'lng'"),
        (b"h3,kind\n", "l.csv", "needs a class column"),
        (b"\xff\xfe", "l.csv", "not UTF-8"),
        (b"x", "l.txt", "must end in .geojson"),
    ],
)
def test_bad_labels_get_one_clear_error(data, name, match):
    with pytest.raises(InvalidInputError, match=match):
        _parse(data, name)


def test_a_coarser_csv_cell_is_refused():
    coarse = h3i.int_to_str(h3i.latlng_to_cell(LAT, LNG, RES - 2))
    with pytest.raises(InvalidInputError, match="coarser than the embeddings"):
        _parse(f"h3,label\n{coarse},a\n".encode(), "l.csv")


def test_a_self_crossing_polygon_is_refused():
    bowtie = [[LNG, LAT], [LNG + 0.1, LAT + 0.1], [LNG + 0.1, LAT], [LNG, LAT + 0.1], [LNG, LAT]]
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [bowtie]},
        "properties": {"class": "a"},
    }
    with pytest.raises(InvalidInputError, match=r"^feature 0 .* not a valid polygon \(Self-intersection") as caught:
        _parse(_geojson(feature))
    assert "malformed" not in str(caught.value)  # the reason itself, not wrapped in another


def test_labels_outside_the_embeddings_are_named():
    labels = _parse(_geojson(*(_point(LAT + 0.1 * i, LNG, c) for i, c in enumerate("aabb"))))
    check_footprint(labels, np.sort(labels.h3))  # all embedded: fine
    embedded = np.sort(labels.h3[1:])
    missing = h3i.int_to_str(int(labels.h3[0]))
    with pytest.raises(InvalidInputError, match=rf"1 of 4 labelled cells have no embedding.*{missing}"):
        check_footprint(labels, embedded)


def test_unreadable_file_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot read the label file"):
        read_labels(tmp_path / "absent.geojson", h3_resolution=RES)
