-- Reference only: the pipeline matches with warehouse/matching.py (numpy, same rule, identical rows);
-- benchmarks/join.py runs this query and compares the two image by image.
-- Each image to one road segment within $max_distance_m metres, preferring segments that run the
-- way a non-panoramic camera looks. Distances are measured in $metric_crs (a UTM zone);
-- always_xy keeps lon/lat axis order.
--
-- heading_difference_deg: the angle between the camera's compass heading and the segment's
-- *local* bearing (between the points $bearing_window_m either side of the point nearest the
-- image, so a bend elsewhere on the segment does not count), folded to 0..90 because a road
-- runs both ways; NULL for panoramas and images without a compass angle.
-- The chosen candidate has the lowest  distance_m + $heading_penalty_m * heading_difference_deg / 90:
-- a road crossing the camera's view at right angles counts as $heading_penalty_m metres further away.
-- Bearings are grid bearings of the UTM zone (within about 2 degrees of true north at mid latitudes).
-- Integer keys: image rows by rowid, segments numbered in segment_id order (so the last
-- tie-break on the number is the tie-break on the id); text ids are joined back once at the end.
-- One spatial join, materialised; the nearest distance per image and the winner are hash
-- aggregates (arg_min over a struct ordered like the tie-break), no window over all candidates.
INSERT INTO matches
WITH img AS (
    SELECT rowid AS ik, CASE WHEN is_pano IS NOT TRUE THEN compass_angle END AS heading_deg,
           ST_Transform(geometry, 'EPSG:4326', $metric_crs, always_xy := true) AS g
    FROM images
),
seg AS (
    SELECT row_number() OVER (ORDER BY segment_id) AS sk, segment_id,
           ST_Transform(geometry, 'EPSG:4326', $metric_crs, always_xy := true) AS g
    FROM segments
),
candidates AS MATERIALIZED (
    SELECT img.ik, seg.sk, ST_Distance(img.g, seg.g) AS distance_m
    FROM img JOIN seg ON ST_DWithin(img.g, seg.g, $max_distance_m)
),
nearest AS (
    SELECT ik, min(distance_m) AS nearest_m FROM candidates GROUP BY ik
),
contenders AS (
    -- a score is never below the distance, and the nearest segment scores at most its distance plus
    -- the penalty: only segments within that margin of the nearest can win (for images without a
    -- heading, only the nearest). Bearings are computed for these alone.
    SELECT c.ik, c.sk, c.distance_m, img.heading_deg, img.g AS img_g
    FROM candidates c JOIN nearest n USING (ik) JOIN img USING (ik)
    WHERE c.distance_m <= n.nearest_m + CASE WHEN img.heading_deg IS NULL THEN 0 ELSE $heading_penalty_m END
),
located AS (
    SELECT c.ik, c.sk, c.distance_m, c.heading_deg, seg.g AS seg_g, ST_Length(seg.g) AS seg_length_m,
           ST_LineLocatePoint(seg.g, c.img_g) AS at_fraction
    FROM contenders c JOIN seg USING (sk)
),
local_bearing AS (
    SELECT *,
           ST_LineInterpolatePoint(seg_g, greatest(at_fraction - $bearing_window_m / nullif(seg_length_m, 0), 0)) AS before_pt,
           ST_LineInterpolatePoint(seg_g, least(at_fraction + $bearing_window_m / nullif(seg_length_m, 0), 1)) AS after_pt
    FROM located
),
scored AS (
    SELECT ik, sk, distance_m,
           CASE WHEN heading_deg IS NULL OR seg_length_m = 0 THEN NULL
                ELSE 90 - abs(90 - abs(heading_deg - (degrees(atan2(ST_X(after_pt) - ST_X(before_pt),
                                                                    ST_Y(after_pt) - ST_Y(before_pt))) + 360) % 360) % 180)
           END AS heading_difference_deg
    FROM local_bearing
),
best AS (
    SELECT ik, arg_min(struct_pack(sk, distance_m, heading_difference_deg),
                       struct_pack(score := distance_m + coalesce($heading_penalty_m * heading_difference_deg / 90, 0),
                                   distance_m, sk)) AS b
    FROM scored GROUP BY ik
)
SELECT i.image_id, seg.segment_id, best.b.distance_m, best.b.heading_difference_deg
FROM best JOIN images i ON i.rowid = best.ik JOIN seg ON seg.sk = best.b.sk;
