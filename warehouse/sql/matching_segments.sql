-- Matching input (warehouse/matching.py): segments in segment_id order (the last tie-break), as WKB.
SELECT segment_id, ST_AsWKB(geometry) AS wkb FROM segments WHERE geometry IS NOT NULL ORDER BY segment_id;
