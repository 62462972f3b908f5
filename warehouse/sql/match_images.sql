-- Each image to its nearest road segment within $max_distance_m metres.
-- Distances are measured in $metric_crs (a UTM zone); always_xy keeps lon/lat axis order.
-- heading_difference_deg: angle between the camera heading and the segment's bearing, folded
-- to 0..90 because a road runs both ways; NULL for panoramas, whose heading says nothing.
INSERT INTO matches
WITH img AS (
    SELECT image_id, compass_angle, is_pano,
           ST_Transform(geometry, 'EPSG:4326', $metric_crs, always_xy := true) AS g
    FROM images
),
seg AS (
    SELECT segment_id,
           ST_Transform(geometry, 'EPSG:4326', $metric_crs, always_xy := true) AS g
    FROM segments
),
candidates AS (
    SELECT img.image_id, img.compass_angle, img.is_pano, seg.segment_id, seg.g AS seg_g,
           ST_Distance(img.g, seg.g) AS distance_m
    FROM img JOIN seg ON ST_DWithin(img.g, seg.g, $max_distance_m)
),
nearest AS (
    SELECT * FROM candidates
    QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY distance_m, segment_id) = 1
),
bearing AS (
    SELECT *, (degrees(atan2(ST_X(ST_EndPoint(seg_g)) - ST_X(ST_StartPoint(seg_g)),
                             ST_Y(ST_EndPoint(seg_g)) - ST_Y(ST_StartPoint(seg_g)))) + 360) % 360 AS bearing_deg
    FROM nearest
)
SELECT image_id, segment_id, distance_m,
       CASE WHEN is_pano OR compass_angle IS NULL THEN NULL
            ELSE 90 - abs(90 - abs(compass_angle - bearing_deg) % 180) END AS heading_difference_deg
FROM bearing;
