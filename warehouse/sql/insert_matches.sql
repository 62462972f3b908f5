-- The matcher's rows (registered as the Arrow table _numpy_matches) into the matches contract table.
INSERT INTO matches SELECT image_id, segment_id, distance_m, heading_difference_deg FROM _numpy_matches;
