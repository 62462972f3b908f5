-- Per segment and attribute: how many matched images, the dominant label, its share with a
-- Wilson score interval (z = $z), mean confidence, counts per label and the capture period.
INSERT INTO segment_attributes
WITH labelled AS (
    SELECT m.segment_id, p.attribute, p.label, p.confidence, i.captured_at
    FROM predictions p
    JOIN matches m USING (image_id)
    JOIN images i USING (image_id)
),
per_label AS (
    SELECT segment_id, attribute, label, count(*) AS n
    FROM labelled GROUP BY ALL
),
per_attribute AS (
    SELECT segment_id, attribute, count(*) AS n_images, avg(confidence) AS mean_confidence,
           min(captured_at) AS first_captured_at, max(captured_at) AS last_captured_at
    FROM labelled GROUP BY ALL
),
dominant AS (
    SELECT segment_id, attribute, label, n,
           map(list(label ORDER BY label) OVER w, list(n ORDER BY label) OVER w) AS label_counts
    FROM per_label
    WINDOW w AS (PARTITION BY segment_id, attribute ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
    QUALIFY row_number() OVER (PARTITION BY segment_id, attribute ORDER BY n DESC, label) = 1
),
shares AS (
    SELECT a.*, d.label, d.label_counts, d.n / a.n_images AS share
    FROM per_attribute a JOIN dominant d USING (segment_id, attribute)
)
SELECT segment_id, attribute, n_images, label, share,
       (share + $z * $z / (2 * n_images)
        - $z * sqrt(share * (1 - share) / n_images + $z * $z / (4 * n_images * n_images)))
        / (1 + $z * $z / n_images) AS share_ci_low,
       (share + $z * $z / (2 * n_images)
        + $z * sqrt(share * (1 - share) / n_images + $z * $z / (4 * n_images * n_images)))
        / (1 + $z * $z / n_images) AS share_ci_high,
       mean_confidence, label_counts, first_captured_at, last_captured_at
FROM shares;
