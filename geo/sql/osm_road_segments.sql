-- Road segments from a local OSM PBF ($path): ways whose highway tag is in $road_classes, split
-- at junctions (nodes the kept ways visit more than once: shared by two ways, or revisited by
-- one) and then into equal parts no longer than $max_length_m metres.
--
-- Segment ids are osm:<way_id>:<k>, k counting the parts of the way from its first node. They
-- are numbered over the whole file before the bbox filter, so the same road gets the same id
-- whatever bbox is asked for (as long as the file and the two options stay the same).
-- Lengths are geodesic (ST_Length_Spheroid wants lat/lon order, hence ST_FlipCoordinates);
-- the length split is done in $metric_crs with always_xy so axes stay lon/lat.
WITH ways AS (
    SELECT id AS osm_way_id, tags['highway'] AS highway, tags['name'] AS name, refs
    FROM ST_ReadOSM($path)
    WHERE kind = 'way' AND list_contains($road_classes, tags['highway'])
),
way_nodes AS (
    SELECT osm_way_id, unnest(refs) AS node_id, generate_subscripts(refs, 1) AS idx, len(refs) AS n_refs
    FROM ways
),
nodes AS (
    SELECT id AS node_id, lon, lat
    FROM ST_ReadOSM($path)
    WHERE kind = 'node' AND id IN (SELECT node_id FROM way_nodes)
),
junctions AS (
    SELECT node_id FROM way_nodes GROUP BY node_id HAVING count(*) >= 2
),
located AS (  -- vertices missing from a clipped extract drop out here
    SELECT wn.osm_way_id, wn.idx, n.lon, n.lat,
           (wn.idx > 1 AND wn.idx < wn.n_refs AND j.node_id IS NOT NULL) AS splits_here
    FROM way_nodes wn
    JOIN nodes n USING (node_id)
    LEFT JOIN junctions j USING (node_id)
),
pieced AS (
    SELECT *, sum(splits_here::INTEGER) OVER (PARTITION BY osm_way_id ORDER BY idx ROWS UNBOUNDED PRECEDING) AS piece
    FROM located
),
vertices AS (
    SELECT osm_way_id, piece, idx, lon, lat FROM pieced
    UNION ALL  -- a junction vertex also ends the piece before it
    SELECT osm_way_id, piece - 1, idx, lon, lat FROM pieced WHERE splits_here
),
pieces AS (
    SELECT osm_way_id, piece, ST_MakeLine(list(ST_Point(lon, lat) ORDER BY idx)) AS geom
    FROM vertices
    GROUP BY osm_way_id, piece
    HAVING count(*) >= 2
),
numbered AS (
    SELECT osm_way_id, piece, geom,
           greatest(1, ceil(ST_Length_Spheroid(ST_FlipCoordinates(geom)) / $max_length_m))::INTEGER AS n_parts
    FROM pieces
),
offsets AS (
    SELECT *, coalesce(sum(n_parts) OVER (PARTITION BY osm_way_id ORDER BY piece
                                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS first_part
    FROM numbered  -- numbered before any bbox filter: that keeps the ids stable
),
parts AS (
    SELECT o.osm_way_id, o.first_part + p.part AS k,
           CASE WHEN o.n_parts = 1 THEN o.geom
                ELSE ST_Transform(
                        ST_LineSubstring(ST_Transform(o.geom, 'EPSG:4326', $metric_crs, always_xy := true),
                                         p.part / o.n_parts, (p.part + 1) / o.n_parts),
                        $metric_crs, 'EPSG:4326', always_xy := true)
           END AS geom
    FROM offsets o, LATERAL (SELECT unnest(range(o.n_parts)) AS part) p
    WHERE ST_Intersects(o.geom, ST_MakeEnvelope($min_lon, $min_lat, $max_lon, $max_lat))
)
SELECT 'osm:' || p.osm_way_id || ':' || p.k AS segment_id, p.osm_way_id, w.highway, w.name,
       ST_Length_Spheroid(ST_FlipCoordinates(p.geom)) AS length_m, ST_AsWKB(p.geom) AS wkb
FROM parts p JOIN ways w USING (osm_way_id)
WHERE ST_Intersects(p.geom, ST_MakeEnvelope($min_lon, $min_lat, $max_lon, $max_lat))
ORDER BY p.osm_way_id, p.k;
