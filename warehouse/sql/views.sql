-- Planner views and table macros over a finished run (documented in docs/planner-outputs.md).
-- Views have no parameters; the table macros take them as arguments, e.g.
--   SELECT * FROM segments_with_label('weather', 'rainy', min_images := 3);
-- and from Python bind values, never format them in: con.execute("... segments_with_label($a, $l)", {...}).

-- One row per segment and attribute, with the road's name, class and geometry.
CREATE OR REPLACE VIEW segment_labels AS
SELECT s.segment_id, s.osm_way_id, s.name, s.highway, s.length_m, a.attribute, a.label, a.share,
       a.share_ci_low, a.share_ci_high, a.n_images, a.mean_confidence, a.label_counts,
       a.first_captured_at, a.last_captured_at, s.geometry
FROM segments s JOIN segment_attributes a USING (segment_id);

-- One row per segment with images: its dominant weather, how sure, and its geometry.
CREATE OR REPLACE VIEW segments_by_weather AS
SELECT segment_id, name, highway, length_m, label AS weather, share, share_ci_low, share_ci_high,
       n_images, last_captured_at, geometry
FROM segment_labels WHERE attribute = 'weather';

-- Segments ranked by the share of their images of slightly or very poor quality (worst first).
CREATE OR REPLACE VIEW worst_image_quality AS
SELECT segment_id, name, highway, length_m, n_images,
       (coalesce(label_counts['slightly_poor'], 0) + coalesce(label_counts['very_poor'], 0)) / n_images AS poor_share,
       coalesce(label_counts['very_poor'], 0) / n_images AS very_poor_share,
       label AS dominant_quality, geometry
FROM segment_labels WHERE attribute = 'quality'
ORDER BY poor_share DESC, very_poor_share DESC, n_images DESC, segment_id;

-- Road segments with no matched image: where to collect more imagery.
CREATE OR REPLACE VIEW coverage_gaps AS
SELECT s.segment_id, s.osm_way_id, s.name, s.highway, s.length_m, s.geometry
FROM segments s
WHERE NOT EXISTS (SELECT 1 FROM matches m WHERE m.segment_id = s.segment_id);

-- Images with no road segment within the matching distance, with the reason.
CREATE OR REPLACE VIEW unmatched_images AS
SELECT i.image_id, u.reason, u.nearest_segment_id, u.nearest_distance_m, i.lon, i.lat, i.captured_at,
       i.is_pano, i.path, i.geometry
FROM images i JOIN unmatched_reasons u USING (image_id);

-- Segments whose dominant label of an attribute is label_value, with at least min_images images
-- and a share of at least min_share.
CREATE OR REPLACE MACRO segments_with_label(attribute_name, label_value, min_images := 1, min_share := 0.0) AS TABLE
SELECT * FROM segment_labels
WHERE attribute = attribute_name AND label = label_value AND n_images >= min_images AND share >= min_share
ORDER BY share DESC, n_images DESC, segment_id;

-- The top_n segments with the largest share of poor-quality images among those with at least min_images.
CREATE OR REPLACE MACRO worst_quality_segments(min_images := 1, top_n := 20) AS TABLE
SELECT * FROM worst_image_quality WHERE n_images >= min_images LIMIT top_n;

-- Coverage gaps of the given highway classes (NULL: all) and at least min_length_m long, longest first.
CREATE OR REPLACE MACRO coverage_gaps_where(highway_classes := NULL, min_length_m := 0.0) AS TABLE
SELECT * FROM coverage_gaps
WHERE (highway_classes IS NULL OR list_contains(highway_classes, highway)) AND length_m >= min_length_m
ORDER BY length_m DESC, segment_id;

-- Per-year dominant labels of one attribute (filled when the run was sliced by capture year).
CREATE OR REPLACE MACRO segment_labels_in_year(attribute_name, year_value) AS TABLE
SELECT s.segment_id, s.name, s.highway, s.length_m, y.capture_year, y.label, y.share, y.share_ci_low,
       y.share_ci_high, y.n_images, s.geometry
FROM segments s JOIN segment_attributes_by_year y USING (segment_id)
WHERE y.attribute = attribute_name AND y.capture_year = year_value
ORDER BY s.segment_id;
