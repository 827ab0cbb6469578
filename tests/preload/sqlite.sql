-- tests/preload/sqlite.sql — sqlite3 on an in-memory table of 200,000 rows.
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, name TEXT, v REAL, blob BLOB);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200000)
INSERT INTO t SELECT i, (i * 7919) % 1000, 'name-' || ((i * 104729) % 200000), (i % 997) * 1.5,
                     zeroblob(i % 64) FROM c;
CREATE INDEX t_k ON t(k);
CREATE INDEX t_name ON t(name);
SELECT count(*), sum(k), total(v), sum(length(blob)) FROM t;
SELECT k, count(*), sum(id) FROM t GROUP BY k ORDER BY k LIMIT 5;
SELECT name FROM t ORDER BY name DESC LIMIT 5;
SELECT count(DISTINCT name) FROM t;
SELECT group_concat(id) FROM (SELECT id FROM t WHERE k = 17 ORDER BY id LIMIT 20);
UPDATE t SET v = v * 2, name = upper(name) WHERE k < 100;
DELETE FROM t WHERE id % 3 = 0;
SELECT count(*), total(v), max(name) FROM t;
SELECT a.k, count(*), sum(b.v) FROM t a JOIN t b ON a.id = b.id + 1 WHERE a.k < 3 GROUP BY a.k ORDER BY a.k;
CREATE TABLE u AS SELECT k, group_concat(name, ',') AS names FROM t GROUP BY k;
SELECT count(*), sum(length(names)) FROM u;
SELECT k, substr(names, 1, 40) FROM u ORDER BY length(names) DESC, k LIMIT 3;
