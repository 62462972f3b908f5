-- Segments with their per-attribute aggregates (long form; pivoted to one column group per attribute on export).
SELECT s.segment_id, s.osm_way_id, s.highway, s.name, s.length_m, ST_AsWKB(s.geometry) AS wkb,
       a.attribute, a.n_images, a.label, a.share, a.share_ci_low, a.share_ci_high, a.mean_confidence,
       to_json(a.label_counts)::VARCHAR AS label_counts,  -- JSON text: maps survive neither GeoPackage nor older GDAL
       a.first_captured_at, a.last_captured_at
FROM segments s LEFT JOIN segment_attributes a USING (segment_id)
ORDER BY s.segment_id, a.attribute;
