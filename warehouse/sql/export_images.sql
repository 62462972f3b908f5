-- Images with their match and predictions (long form; pivoted to one column group per attribute on export),
-- for the images with $lo <= image_id < $hi (either NULL: no bound), so that export reads them batch by batch.
WITH i AS (SELECT * FROM images WHERE ($lo IS NULL OR image_id >= $lo) AND ($hi IS NULL OR image_id < $hi)),
     m AS (SELECT * FROM matches WHERE ($lo IS NULL OR image_id >= $lo) AND ($hi IS NULL OR image_id < $hi)),
     u AS (SELECT * FROM unmatched_reasons WHERE ($lo IS NULL OR image_id >= $lo) AND ($hi IS NULL OR image_id < $hi)),
     p AS (SELECT * FROM predictions WHERE ($lo IS NULL OR image_id >= $lo) AND ($hi IS NULL OR image_id < $hi))
SELECT i.image_id, i.source, i.sequence_id, i.captured_at, i.compass_angle, i.is_pano, i.camera_type,
       i.lon, i.lat, i.width, i.height, i.path, i.sha256, ST_AsWKB(i.geometry) AS wkb,
       m.segment_id, m.distance_m, m.heading_difference_deg, u.reason AS unmatched_reason,
       p.attribute, p.label, p.confidence, p.method, p.model_id
FROM i
LEFT JOIN m USING (image_id)
LEFT JOIN u USING (image_id)
LEFT JOIN p USING (image_id)
ORDER BY i.image_id, p.attribute;
