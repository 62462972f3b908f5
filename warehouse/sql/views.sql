-- Planner views over a finished run.

-- One row per segment and attribute, with the road's name, class and geometry.
CREATE OR REPLACE VIEW segment_labels AS
SELECT s.segment_id, s.name, s.highway, s.length_m, a.attribute, a.label, a.share,
       a.share_ci_low, a.share_ci_high, a.n_images, a.first_captured_at, a.last_captured_at, s.geometry
FROM segments s JOIN segment_attributes a USING (segment_id);

-- Road segments with no matched image: where to collect more imagery.
CREATE OR REPLACE VIEW coverage_gaps AS
SELECT s.segment_id, s.name, s.highway, s.length_m, s.geometry
FROM segments s
WHERE NOT EXISTS (SELECT 1 FROM matches m WHERE m.segment_id = s.segment_id);

-- Images with no road segment within the matching distance.
CREATE OR REPLACE VIEW unmatched_images AS
SELECT i.image_id, i.lon, i.lat, i.captured_at, i.path, i.geometry
FROM images i
WHERE NOT EXISTS (SELECT 1 FROM matches m WHERE m.image_id = i.image_id);
