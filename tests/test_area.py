"""A city as a polygon (--area): reading boundaries in any format and CRS, refusals, and what each stage drops.

The boundary is administrative-style: the sample area's extent with its north-east corner cut
off, a hole over a cluster of sample images, and a second part (an exclave) to the east; saved
in ETRS89 / UTM 32N (EPSG:25832), the CRS German boundaries come in.
"""

from __future__ import annotations

import pickle
import shutil

import geopandas as gpd
import mercantile
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import LineString, MultiPolygon, Polygon

from geo.area import OUTSIDE_AREA, Area, AreaError, polygon_area_km2, read_area, resolve_area
from geo.bbox import BBox, parse_bbox
from geo.imagery import SAMPLE_AREA, collect_images, make_source
from geo.mapillary.search import in_area, split_box
from geo.mapillary.select import filter_reasons
from geo.mapillary.tiles import covering_tiles
from geo.roads import load_road_segments

pytestmark = pytest.mark.timeout(120)

OUTER = [(9.1615, 48.7628), (9.1760, 48.7628), (9.1760, 48.7755), (9.1720, 48.7793), (9.1615, 48.7793)]
HOLE = [(9.1668, 48.7716), (9.1682, 48.7716), (9.1682, 48.7732), (9.1668, 48.7732)]
EXCLAVE = [(9.1900, 48.7700), (9.1950, 48.7700), (9.1950, 48.7740), (9.1900, 48.7740)]
#: sample images in the hole (4) and in the cut-off corner (1): outside the area
OUTSIDE = {"483343130885198", "971511608006545", "3586189641642492", "8156229421077439", "1022073649539576"}


def boundary() -> MultiPolygon:
    return MultiPolygon([Polygon(OUTER, [HOLE]), Polygon(EXCLAVE)])


def write_boundary(path, crs="EPSG:25832", geometry=None):
    """The boundary (or ``geometry``) saved to ``path`` (by suffix: .geojson, .gpkg, .parquet) in ``crs``."""
    frame = gpd.GeoDataFrame({"name": ["Stuttgart-West (test)"]}, geometry=[geometry or boundary()], crs="EPSG:4326")
    frame = frame.to_crs(crs) if crs else frame.set_crs(None, allow_override=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_file(path)
    return path


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg", ".parquet"])
def test_a_projected_boundary_with_a_hole_is_read_in_wgs84(tmp_path, suffix):
    area = read_area(write_boundary(tmp_path / f"city{suffix}"))
    assert isinstance(area, BBox) and isinstance(area, Area)
    assert area.as_list() == pytest.approx([9.1615, 48.7628, 9.1950, 48.7793], abs=1e-6)  # the polygon's bounds
    assert shapely.equals_exact(shapely.normalize(area.polygon), shapely.normalize(boundary()), tolerance=1e-6)
    inside = area.contains_points(np.array([9.163, 9.1675, 9.1745, 9.192, 9.185]),
                                  np.array([48.765, 48.7724, 48.7780, 48.772, 48.772]))
    assert inside.tolist() == [True, False, False, True, False]  # outer, hole, cut corner, exclave, between parts
    assert area.contains(9.1675, 48.7724)  # ``contains`` stays the box test: a BBox wherever one is expected


def test_the_area_is_the_exact_ellipsoidal_area_of_the_polygon(tmp_path):
    area = read_area(write_boundary(tmp_path / "city.gpkg"))
    outer = parse_bbox([9.1615, 48.7628, 9.1760, 48.7793])
    corner = polygon_area_km2(Polygon([(9.1760, 48.7755), (9.1760, 48.7793), (9.1720, 48.7793)]))
    hole, exclave = parse_bbox([*HOLE[0], *HOLE[2]]), parse_bbox([*EXCLAVE[0], *EXCLAVE[2]])
    # rectangles by the exact authalic formula of BBox; the corner triangle's edge is not a parallel: 0.1% slack
    expected = outer.area_km2 - corner - hole.area_km2 + exclave.area_km2
    assert area.area_km2 == pytest.approx(expected, rel=1e-3)
    assert area.area_km2 < area.bbox.area_km2 * 0.75  # the limit applies to the polygon, not its bounds


def test_the_area_limit_applies_to_the_polygon_not_its_bounds(tmp_path):
    # an L along two long thin arms: 0.5° x 0.5° bounds (about 2,000 km²), a polygon of about 150 km²
    ell = Polygon([(9.0, 48.5), (9.5, 48.5), (9.5, 48.52), (9.02, 48.52), (9.02, 49.0), (9.0, 49.0)])
    path = write_boundary(tmp_path / "ell.geojson", geometry=ell)
    area = read_area(path, max_area_km2=300)
    assert area.area_km2 < 300 < area.bbox.area_km2
    with pytest.raises(AreaError, match=r"ell.geojson.*covers 1\d\d km², more than the limit of 100 km²"):
        read_area(path, max_area_km2=100)


def test_a_bbox_with_an_area_is_their_intersection(tmp_path):
    path = write_boundary(tmp_path / "city.gpkg")
    part = resolve_area("9.16,48.76,9.17,48.78", path)
    assert isinstance(part, Area) and part.as_list() == pytest.approx([9.1615, 48.7628, 9.17, 48.7793], abs=1e-6)
    assert not part.contains_points(np.array([9.192]), np.array([48.772]))[0]  # the exclave is cut off
    with pytest.raises(AreaError, match="do not overlap"):
        resolve_area("9.30,48.76,9.31,48.77", path)
    assert resolve_area("9.16,48.76,9.17,48.78", None) == BBox(9.16, 48.76, 9.17, 48.78)  # no file: the box
    with pytest.raises(Exception, match="--bbox .* or --area"):
        resolve_area(None, None)


def test_bad_area_files_are_refused_naming_the_file_and_the_problem(tmp_path):
    with pytest.raises(AreaError, match="nowhere.gpkg' does not exist"):
        read_area(tmp_path / "nowhere.gpkg")
    (tmp_path / "notes.txt").write_text("the city")
    with pytest.raises(AreaError, match="notes.txt' is not GeoJSON, GeoPackage or GeoParquet"):
        read_area(tmp_path / "notes.txt")
    (tmp_path / "broken.geojson").write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(AreaError, match="broken.geojson' cannot be read"):
        read_area(tmp_path / "broken.geojson")
    lines = write_boundary(tmp_path / "roads.gpkg", geometry=LineString([(9.16, 48.77), (9.17, 48.77)]))
    with pytest.raises(AreaError, match="roads.gpkg' is not a polygon boundary: it holds LineString"):
        read_area(lines)
    gpd.GeoDataFrame({"name": []}, geometry=[], crs="EPSG:4326").to_file(tmp_path / "empty.gpkg")
    with pytest.raises(AreaError, match="empty.gpkg' has no geometry"):
        read_area(tmp_path / "empty.gpkg")
    projected = gpd.GeoDataFrame(geometry=[boundary()], crs="EPSG:4326").to_crs("EPSG:25832")
    projected.set_crs(None, allow_override=True).to_parquet(tmp_path / "nocrs.parquet")
    with pytest.raises(AreaError, match="nocrs.parquet' has no CRS and its coordinates .* are not lon/lat degrees"):
        read_area(tmp_path / "nocrs.parquet")
    gpd.GeoDataFrame(geometry=[boundary()]).to_parquet(tmp_path / "degrees.parquet")  # no CRS, degrees: WGS84
    assert read_area(tmp_path / "degrees.parquet").as_list() == pytest.approx([9.1615, 48.7628, 9.1950, 48.7793])
    bowtie = Polygon([(9.16, 48.76), (9.17, 48.77), (9.17, 48.76), (9.16, 48.77)])  # self-intersecting: repaired
    assert read_area(write_boundary(tmp_path / "bowtie.gpkg", crs="EPSG:4326", geometry=bowtie)).area_km2 > 0
    wide = Polygon([(-179, 10), (179, 10), (179, 11), (-179, 11)])
    with pytest.raises(AreaError, match="antimeridian"):
        read_area(write_boundary(tmp_path / "wide.geojson", crs="EPSG:4326", geometry=wide), max_area_km2=None)


def test_an_area_survives_pickling_as_prefect_and_worker_processes_need(tmp_path):
    area = read_area(write_boundary(tmp_path / "city.gpkg"))
    again = pickle.loads(pickle.dumps(area))
    assert again == area and again.source == area.source and hash(again) == hash(area)
    assert again.contains_points(np.array([9.1675]), np.array([48.7724])).tolist() == [False]


def test_folder_images_outside_the_polygon_are_dropped_and_counted(tmp_path):
    folder = tmp_path / "collection"
    shutil.copytree(SAMPLE_AREA / "images", folder / "images")
    pd.read_parquet(SAMPLE_AREA / "images.parquet").to_parquet(folder / "images.parquet")
    area = read_area(write_boundary(tmp_path / "city.gpkg"))
    result = collect_images(make_source("folder", folder), area, tmp_path / "store", progress=False)
    assert set(result.images.image_id).isdisjoint(OUTSIDE) and len(result.images) == 19 - len(OUTSIDE)
    c = result.counts
    assert c["not_selected"] == {OUTSIDE_AREA: len(OUTSIDE)} and c["discovered"] == 19
    assert c["discovered"] == c["selected"] + sum(c["not_selected"].values()) + c["discover_failed"]
    source = make_source("folder", folder)  # the flow's path: discover per unit, then one selection
    found = source.discover_unit("area", area)
    selected, not_selected = source.select_counted([found.records], area, max_images=10)
    assert len(selected) == 10 and not_selected == {OUTSIDE_AREA: len(OUTSIDE), "beyond max_images": 4}


def test_road_segments_outside_the_polygon_are_dropped_and_counted(tmp_path):
    area = read_area(write_boundary(tmp_path / "city.geojson"))
    everything = load_road_segments(BBox(*area.as_list()), "sample")
    kept = load_road_segments(area, "sample")
    inside = shapely.intersects(area.polygon, everything.geometry.to_numpy())
    assert 0 < len(kept) < len(everything) and set(kept.segment_id) == set(everything.segment_id[inside])
    assert kept.attrs["counts"] == {"segments_outside_area": int((~inside).sum())}
    assert "counts" not in everything.attrs  # a plain box drops nothing


def test_only_tiles_and_search_boxes_touching_the_polygon_are_queried(tmp_path):
    # two parts about 3 km apart: the z14 tiles (about 1.6 km here) between them are not asked for
    ring = MultiPolygon([Polygon([(9.10, 48.74), (9.115, 48.74), (9.115, 48.75), (9.10, 48.75)]),
                         Polygon([(9.16, 48.77), (9.175, 48.77), (9.175, 48.78), (9.16, 48.78)])])
    area = read_area(write_boundary(tmp_path / "parts.gpkg", geometry=ring))
    every = covering_tiles(area.bbox)
    asked = covering_tiles(area)
    assert 0 < len(asked) < len(every)
    for name in every:
        z, x, y = (int(v) for v in name.split("/"))
        touches = area.intersects_box(*mercantile.bounds(mercantile.Tile(x, y, z)))
        assert (name in asked) == touches
    from geo.mapillary.source import MapillarySource

    assert MapillarySource().work_units(area) == asked  # the flow maps one task per tile: only these are asked
    boxes = split_box(area.bbox, 0.005)
    kept = in_area(boxes, area)
    assert 0 < len(kept) < len(boxes) and all(area.intersects_box(*b.as_list()) for b in kept)
    assert in_area(boxes, area.bbox) == boxes


def test_mapillary_selection_counts_images_outside_the_polygon(tmp_path):
    from geo.mapillary.options import MapillaryOptions

    area = read_area(write_boundary(tmp_path / "city.gpkg"))
    frame = pd.DataFrame({"lon": [9.163, 9.1675, None, 9.185], "lat": [48.765, 48.7724, None, 48.772],
                          "captured_at": pd.to_datetime(["2023-01-01"] * 4, utc=True), "is_pano": False,
                          "organization_id": None})
    reasons = filter_reasons(frame, MapillaryOptions(), area).tolist()
    assert reasons == [None, OUTSIDE_AREA, "no position", OUTSIDE_AREA]


def test_the_run_configuration_takes_an_area_with_or_without_a_bbox(tmp_path):
    from contracts.errors import ConfigError
    from flows.config import run_config

    path = write_boundary(tmp_path / "city.gpkg")
    config = run_config(area_file=str(path), model="tiny")
    assert config.bbox == pytest.approx([9.1615, 48.7628, 9.1950, 48.7793], abs=1e-6)
    place = config.place()
    assert isinstance(place, Area) and place.polygon.equals(read_area(path).polygon)
    assert run_config(bbox="9.16,48.76,9.17,48.78", area_file=str(path), model="tiny").bbox[2] == pytest.approx(9.17)
    assert type(run_config(bbox="9.16,48.76,9.17,48.78", model="tiny").place()) is BBox
    with pytest.raises(ConfigError, match="--area.*does not exist"):
        run_config(area_file=str(tmp_path / "nowhere.geojson"), model="tiny")
    with pytest.raises(ConfigError, match="--bbox.*covers .* km², more than the limit of 1 km²"):
        run_config(area_file=str(path), max_area_km2=1, model="tiny")
    with pytest.raises(ConfigError, match="--bbox.*--area FILE"):
        run_config(model="tiny")
    with pytest.raises(ConfigError, match="--copy-images is for --source folder"):
        run_config(bbox="9.16,48.76,9.17,48.78", copy_images=True, model="tiny")


def test_the_command_line_takes_an_area_without_a_bbox(tmp_path):
    from flows.cli import build_parser, config_options, main
    from flows.config import run_config

    path = write_boundary(tmp_path / "city.geojson")
    args = build_parser().parse_args(["run", "--area", str(path), "--model", "tiny", "--out", str(tmp_path / "out")])
    assert isinstance(run_config(**config_options(args)).place(), Area)
    assert main(["run", "--model", "tiny", "--out", str(tmp_path / "out")]) == 2  # neither: one line, exit code 2
