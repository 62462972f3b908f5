-- Images with their match and predictions (long form; pivoted to one column group per attribute on export).
SELECT i.image_id, i.source, i.sequence_id, i.captured_at, i.compass_angle, i.is_pano, i.camera_type,
       i.lon, i.lat, i.width, i.height, i.path, i.sha256, ST_AsWKB(i.geometry) AS wkb,
       m.segment_id, m.distance_m, m.heading_difference_deg, u.reason AS unmatched_reason,
       p.attribute, p.label, p.confidence, p.method, p.model_id
FROM images i
LEFT JOIN matches m USING (image_id)
LEFT JOIN unmatched_reasons u USING (image_id)
LEFT JOIN predictions p USING (image_id)
ORDER BY i.image_id, p.attribute;
