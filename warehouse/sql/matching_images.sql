-- Matching input (warehouse/matching.py): every located image, its heading for the heading rule (none for panoramas).
SELECT image_id, ST_X(geometry) AS lon, ST_Y(geometry) AS lat,
       CASE WHEN is_pano IS NOT TRUE THEN compass_angle END AS heading_deg
FROM images WHERE geometry IS NOT NULL;
