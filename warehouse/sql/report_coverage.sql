-- Run report: how much of the network the images cover, and how well they matched.
SELECT (SELECT count(*) FROM images) AS images,
       (SELECT count(*) FROM matches) AS matched_images,
       (SELECT count(*) FROM unmatched_reasons) AS unmatched_images,
       (SELECT count(*) FROM segments) AS segments,
       (SELECT count(DISTINCT segment_id) FROM matches) AS segments_with_images,
       (SELECT coalesce(sum(length_m), 0) / 1000 FROM segments) AS road_km,
       (SELECT coalesce(sum(length_m), 0) / 1000 FROM segments s
         WHERE EXISTS (SELECT 1 FROM matches m WHERE m.segment_id = s.segment_id)) AS road_km_with_images,
       (SELECT median(distance_m) FROM matches) AS median_distance_m,
       (SELECT quantile_cont(distance_m, 0.9) FROM matches) AS p90_distance_m,
       (SELECT median(heading_difference_deg) FROM matches) AS median_heading_difference_deg,
       (SELECT count(heading_difference_deg) FROM matches) AS matches_with_heading;
