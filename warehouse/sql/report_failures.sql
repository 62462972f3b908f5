-- Run report: the run's failures by stage and reason, most frequent first (why an empty run is empty).
SELECT stage, reason, count(*) AS items FROM failures GROUP BY ALL ORDER BY items DESC, stage, reason LIMIT 5;
