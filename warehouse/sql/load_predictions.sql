-- Load the classification stage's per-chunk Parquet files into the predictions table.
-- $files: the chunk files (a list; each follows the predictions contract without run_id); $run_id: this run.
-- One streaming scan: DuckDB reads the files in row groups, never the whole set at once.
INSERT INTO predictions BY NAME
SELECT image_id, attribute, label, confidence, probabilities, method, model_id, $run_id AS run_id
FROM read_parquet($files);
