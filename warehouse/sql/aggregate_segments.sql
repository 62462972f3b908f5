-- segment_aggregates(z, by_year): per segment and attribute (and capture year when by_year) the
-- number of matched images, the dominant label, its share with a Wilson score interval at normal
-- quantile z (1.959964 for 95 %), the mean confidence, counts per label and the capture period.
-- A table macro stored in audit.duckdb, so planners can slice a finished run themselves:
--   SELECT * FROM segment_aggregates(1.959964, true) WHERE attribute = 'weather';
CREATE OR REPLACE MACRO segment_aggregates(z, by_year) AS TABLE
WITH labelled AS (
    SELECT m.segment_id, p.attribute, p.label, p.confidence, i.captured_at,
           CASE WHEN by_year THEN year(i.captured_at) END AS capture_year
    FROM predictions p
    JOIN matches m USING (image_id)
    JOIN images i USING (image_id)
),
per_label AS (
    SELECT segment_id, attribute, capture_year, label, count(*) AS n
    FROM labelled GROUP BY ALL
),
per_attribute AS (
    SELECT segment_id, attribute, capture_year, count(*) AS n_images, avg(confidence) AS mean_confidence,
           min(captured_at) AS first_captured_at, max(captured_at) AS last_captured_at
    FROM labelled GROUP BY ALL
),
dominant AS (
    -- one hash aggregate per segment and attribute: the label with most images (ties: the
    -- alphabetically first), its count and all counts as a map ordered by label
    SELECT segment_id, attribute, capture_year,
           arg_min(label, struct_pack(neg_n := -n, label := label)) AS label, max(n) AS n,
           map(list(label ORDER BY label), list(n ORDER BY label)) AS label_counts
    FROM per_label GROUP BY ALL
),
shares AS (
    SELECT a.*, d.label, d.label_counts, d.n / a.n_images AS share
    FROM per_attribute a
    JOIN dominant d ON d.segment_id = a.segment_id AND d.attribute = a.attribute
                   AND d.capture_year IS NOT DISTINCT FROM a.capture_year  -- NULL when not sliced by year
)
SELECT segment_id, attribute, capture_year, n_images, label, share,
       (share + z * z / (2 * n_images)
        - z * sqrt(share * (1 - share) / n_images + z * z / (4 * n_images * n_images)))
        / (1 + z * z / n_images) AS share_ci_low,
       (share + z * z / (2 * n_images)
        + z * sqrt(share * (1 - share) / n_images + z * z / (4 * n_images * n_images)))
        / (1 + z * z / n_images) AS share_ci_high,
       mean_confidence, label_counts, first_captured_at, last_captured_at
FROM shares;
