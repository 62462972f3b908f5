-- Why each image without a match has none: the nearest segment within $search_distance_m (a wider
-- radius than $max_distance_m, to tell "just too far" from "no road here") and a sentence.
INSERT INTO unmatched_reasons
WITH lost AS (
    SELECT image_id, ST_Transform(geometry, 'EPSG:4326', $metric_crs, always_xy := true) AS g
    FROM images i
    WHERE NOT EXISTS (SELECT 1 FROM matches m WHERE m.image_id = i.image_id)
),
seg AS (
    SELECT segment_id, ST_Transform(geometry, 'EPSG:4326', $metric_crs, always_xy := true) AS g FROM segments
),
nearest AS (
    SELECT lost.image_id, arg_min(seg.segment_id, ST_Distance(lost.g, seg.g)) AS segment_id,
           min(ST_Distance(lost.g, seg.g)) AS distance_m
    FROM lost JOIN seg ON ST_DWithin(lost.g, seg.g, $search_distance_m)
    GROUP BY lost.image_id
)
SELECT lost.image_id,
       CASE WHEN NOT EXISTS (SELECT 1 FROM segments) THEN 'no road segments in the area'
            WHEN n.segment_id IS NULL THEN printf('no segment within %.0f m (none within %.0f m)', $max_distance_m, $search_distance_m)
            ELSE printf('no segment within %.0f m (nearest %.1f m away)', $max_distance_m, n.distance_m)
       END AS reason,
       n.segment_id AS nearest_segment_id, n.distance_m AS nearest_distance_m
FROM lost LEFT JOIN nearest n USING (image_id);
