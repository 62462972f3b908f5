-- Run report: per attribute and dominant label, how many segments and kilometres of road.
SELECT a.attribute, a.label, count(*) AS segments, sum(s.length_m) / 1000 AS road_km,
       avg(a.share) AS mean_share, sum(a.n_images) AS images
FROM segment_attributes a JOIN segments s USING (segment_id)
GROUP BY ALL
ORDER BY a.attribute, segments DESC, a.label;
