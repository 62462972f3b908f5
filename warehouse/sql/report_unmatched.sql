-- Run report: why images were not matched (reasons without the per-image distance).
SELECT regexp_replace(reason, ' \(nearest [0-9.]+ m away\)', ' (a segment further away)') AS reason, count(*) AS images
FROM unmatched_reasons GROUP BY ALL ORDER BY images DESC, reason;
