-- The run database: one table per data contract (architecture §2). Geometry is WGS84 lon/lat.
-- Keys: the tables with a row per image or per prediction (images, predictions, matches,
-- unmatched_reasons) declare no PRIMARY KEY: DuckDB keeps a primary key's ART index in memory, which
-- at 1M images (8M prediction rows) outgrew a 512 MB memory limit (benchmarks/README.md, city).
-- Their keys, marked "-- key" below, are unique by construction and checked once after the build
-- (warehouse.build.check_unique_keys: a DuplicateRowsError naming the table and one repeated key).
-- The tables with a row per segment keep their PRIMARY KEY: they grow with the roads, not the images.
CREATE TABLE IF NOT EXISTS images (
    image_id      VARCHAR NOT NULL,  -- key
    source        VARCHAR,
    sequence_id   VARCHAR,
    captured_at   TIMESTAMPTZ,
    compass_angle DOUBLE,     -- degrees clockwise from north
    is_pano       BOOLEAN,
    camera_type   VARCHAR,
    lon           DOUBLE NOT NULL,
    lat           DOUBLE NOT NULL,
    geometry      GEOMETRY,   -- POINT(lon lat)
    width         INTEGER,
    height        INTEGER,
    path          VARCHAR,    -- relative to the run's image store (images/)
    sha256        VARCHAR,
    fetched_at    TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS segments (
    segment_id  VARCHAR PRIMARY KEY,
    osm_way_id  BIGINT,
    highway     VARCHAR,
    name        VARCHAR,
    length_m    DOUBLE,
    geometry    GEOMETRY      -- LINESTRING, lon lat
);

CREATE TABLE IF NOT EXISTS predictions (
    image_id      VARCHAR NOT NULL,
    attribute     VARCHAR NOT NULL,
    label         VARCHAR NOT NULL,
    confidence    FLOAT,
    probabilities MAP(VARCHAR, FLOAT),
    method        VARCHAR NOT NULL,  -- zeroshot, mhadapter, microclip, fair
    model_id      VARCHAR NOT NULL,  -- backbone content hash + head id
    run_id        VARCHAR NOT NULL
    -- key: (image_id, attribute, run_id)
);

CREATE TABLE IF NOT EXISTS matches (
    image_id               VARCHAR NOT NULL,  -- key
    segment_id             VARCHAR NOT NULL,
    distance_m             DOUBLE,
    heading_difference_deg DOUBLE   -- 0..90 between camera heading and road bearing; NULL for panoramas
);

CREATE TABLE IF NOT EXISTS segment_attributes (
    segment_id         VARCHAR NOT NULL,
    attribute          VARCHAR NOT NULL,
    n_images           INTEGER,
    label              VARCHAR,   -- dominant label
    share              DOUBLE,    -- share of images with the dominant label
    share_ci_low       DOUBLE,    -- 95% Wilson interval of that share
    share_ci_high      DOUBLE,
    mean_confidence    DOUBLE,
    label_counts       MAP(VARCHAR, BIGINT),
    first_captured_at  TIMESTAMPTZ,
    last_captured_at   TIMESTAMPTZ,
    PRIMARY KEY (segment_id, attribute)
);

-- Images with no segment within the matching distance, and why (sql/unmatched_images.sql).
CREATE TABLE IF NOT EXISTS unmatched_reasons (
    image_id            VARCHAR NOT NULL,  -- key
    reason              VARCHAR NOT NULL,
    nearest_segment_id  VARCHAR,   -- within the wider search radius, if any
    nearest_distance_m  DOUBLE
);

-- segment_attributes sliced by capture year; filled only when the run asks for it.
CREATE TABLE IF NOT EXISTS segment_attributes_by_year (
    segment_id         VARCHAR NOT NULL,
    attribute          VARCHAR NOT NULL,
    capture_year       INTEGER NOT NULL,
    n_images           INTEGER,
    label              VARCHAR,
    share              DOUBLE,
    share_ci_low       DOUBLE,
    share_ci_high      DOUBLE,
    mean_confidence    DOUBLE,
    label_counts       MAP(VARCHAR, BIGINT),
    first_captured_at  TIMESTAMPTZ,
    last_captured_at   TIMESTAMPTZ,
    PRIMARY KEY (segment_id, attribute, capture_year)
);

CREATE TABLE IF NOT EXISTS failures (
    item_id  VARCHAR,
    stage    VARCHAR,
    reason   VARCHAR
);
