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
INSERT INTO matches
WITH img AS (
    SELECT image_id, CASE WHEN is_pano IS NOT TRUE THEN compass_angle END AS heading_deg,
           ST_Transform(geometry, 'EPSG:4326', $metric_crs, always_xy := true) AS g
    FROM images
),
seg AS (
    SELECT segment_id, ST_Transform(geometry, 'EPSG:4326', $metric_crs, always_xy := true) AS g
    FROM segments
),
candidates AS (
    SELECT img.image_id, img.heading_deg, seg.segment_id, ST_Distance(img.g, seg.g) AS distance_m
    FROM img JOIN seg ON ST_DWithin(img.g, seg.g, $max_distance_m)
),
contenders AS (
    -- a score is never below the distance, and the nearest segment scores at most its distance plus
    -- the penalty: only segments within that margin of the nearest can win (for images without a
    -- heading, only the nearest). Bearings are computed for these alone.
    SELECT * FROM candidates
    QUALIFY distance_m <= min(distance_m) OVER (PARTITION BY image_id)
                          + CASE WHEN heading_deg IS NULL THEN 0 ELSE $heading_penalty_m END
),
located AS (
    SELECT c.*, seg.g AS seg_g, ST_Length(seg.g) AS seg_length_m, ST_LineLocatePoint(seg.g, img.g) AS at_fraction
    FROM contenders c JOIN img USING (image_id) JOIN seg USING (segment_id)
),
local_bearing AS (
    SELECT *,
           ST_LineInterpolatePoint(seg_g, greatest(at_fraction - $bearing_window_m / nullif(seg_length_m, 0), 0)) AS before_pt,
           ST_LineInterpolatePoint(seg_g, least(at_fraction + $bearing_window_m / nullif(seg_length_m, 0), 1)) AS after_pt
    FROM located
),
scored AS (
    SELECT image_id, segment_id, distance_m,
           CASE WHEN heading_deg IS NULL OR seg_length_m = 0 THEN NULL
                ELSE 90 - abs(90 - abs(heading_deg - (degrees(atan2(ST_X(after_pt) - ST_X(before_pt),
                                                                    ST_Y(after_pt) - ST_Y(before_pt))) + 360) % 360) % 180)
           END AS heading_difference_deg
    FROM local_bearing
)
SELECT image_id, segment_id, distance_m, heading_difference_deg
FROM scored
QUALIFY row_number() OVER (
    PARTITION BY image_id
    ORDER BY distance_m + coalesce($heading_penalty_m * heading_difference_deg / 90, 0), distance_m, segment_id
) = 1;
