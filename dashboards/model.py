"""The dashboard's read model: small tables built once from the catalog's views, which pages query.

Why: over a million labels, every page joining labels, consensus, samples and predictions by their
string keys took seconds per filter change (bench/bench_dashboard.py measured it). The joins are done
once here, when the data changes (data.py rebuilds when a file under the data root does), and what
the pages ask is then a scan of a few thousand pre-aggregated rows. Everything the sidebar filters
on (batch, label source) is a grouping column of every table, and every aggregate is a sum, so a
filtered number is the sum of its parts: a median lead time is not, so the pages show the mean.

The tables live in the catalog's own in-memory DuckDB (nothing is written to disk, nothing locked).
"""

from __future__ import annotations

# score bins of the RFNet tables: p(available) floored to 1/1000; thresholds at that resolution are exact
SCORE_BINS = 1000

TABLES = {
    # one row per sample with a consensus label: its recipe's groupings and RFNet's view of it
    "dash_judged": """
        SELECT c.batch_id, c.source, c.status, c.verdict, c.reasons, c.key,
               s.prompt_id, s.category, s.base_model, substr(s.created_at, 1, 10) AS day,
               p.p_available, p.verdict AS rfnet, p.reasons AS rfnet_reasons
        FROM consensus c
        LEFT JOIN (SELECT key, prompt_id, category, base_model, created_at FROM samples) s USING (key)
        LEFT JOIN (SELECT key, p_available, verdict, reasons FROM predictions) p USING (key)""",
    "dash_samples": "SELECT batch_id, count(*) AS n FROM samples GROUP BY ALL",
    "dash_verdicts": """
        SELECT batch_id, source, prompt_id, category, base_model, day, status, verdict, count(*) AS n
        FROM dash_judged GROUP BY ALL""",
    "dash_reasons": """
        SELECT batch_id, source, prompt_id, category, base_model, day, reason, count(*) AS n
        FROM (SELECT *, unnest(reasons) AS reason FROM dash_judged WHERE status = 'decided') GROUP BY ALL""",
    "dash_annotators": """
        WITH shared AS (SELECT key FROM labels WHERE NOT gold GROUP BY key HAVING count(DISTINCT annotator) > 1)
        SELECT l.batch_id, l.source, l.annotator, count(*) AS n, sum(l.lead_time) AS lead_sum,
               count(l.lead_time) AS lead_n, sum(l.prediction_accepted::INT) AS accepted, count(sh.key) AS shared,
               count(c.key) AS agree_n, count(*) FILTER (l.verdict = c.verdict) AS agree_ok,
               count(g.key) AS gold_n, count(*) FILTER (l.verdict = g.verdict) AS gold_ok
        FROM labels l
        LEFT JOIN shared sh ON sh.key = l.key AND NOT l.gold
        LEFT JOIN (SELECT key, verdict FROM consensus WHERE status = 'decided') c ON c.key = l.key AND NOT l.gold
        LEFT JOIN gold g ON g.key = l.key AND l.gold
        GROUP BY ALL""",
    "dash_throughput": """
        SELECT batch_id, source, date_trunc('day', created_at) AS day, annotator, count(*) AS n
        FROM labels GROUP BY ALL""",
    # Cohen's kappa needs, per pair, the shared items, the agreements and each one's "available" count
    "dash_pairs": """
        WITH j AS (SELECT batch_id, source, key, annotator, any_value(verdict) = 'available' AS v
                   FROM labels WHERE NOT gold GROUP BY ALL)
        SELECT a.batch_id, a.source, a.annotator AS a, b.annotator AS b, count(*) AS n,
               sum((a.v = b.v)::INT) AS agree, sum(a.v::INT) AS va, sum(b.v::INT) AS vb
        FROM j a JOIN j b ON a.key = b.key AND a.annotator < b.annotator GROUP BY ALL""",
    # Krippendorff's nominal alpha from sums over samples judged twice or more (m judgements, a available)
    "dash_units": """
        SELECT batch_id, source, count(*) AS units, sum(m) AS m, sum(a) AS a, sum(2.0 * a * (m - a) / (m - 1)) AS dis
        FROM (SELECT batch_id, source, key, count(*) AS m, count(*) FILTER (verdict = 'available') AS a
              FROM labels WHERE NOT gold GROUP BY ALL HAVING count(*) >= 2)
        GROUP BY ALL""",
    "dash_scores": f"""
        SELECT batch_id, source, least(floor(p_available * {SCORE_BINS}), {SCORE_BINS - 1})::INT AS bin,
               (verdict = 'available')::INT AS y, rfnet, count(*) AS n, sum(p_available) AS p_sum
        FROM dash_judged WHERE status = 'decided' AND p_available IS NOT NULL GROUP BY ALL""",
    "dash_models": "SELECT batch_id, model_version, threshold, count(*) AS n FROM predictions GROUP BY ALL",
    "dash_disagreements": """
        SELECT batch_id, source, key, p_available, rfnet, rfnet_reasons, verdict AS human, reasons AS human_reasons,
               abs(p_available - (verdict = 'available')::INT) AS miss
        FROM dash_judged WHERE status = 'decided' AND rfnet <> verdict""",
    # what a gallery tile needs: where its members lie, and both verdicts
    "dash_gallery": """
        SELECT s.key, s.batch_id, s.prompt_id, s.category, s.seed, s.batch_dir, s.shard,
               s.image_offset, s.image_size, s.product_offset, s.product_size, s.mask_offset, s.mask_size,
               s.canny_offset, s.canny_size, s.depth_offset, s.depth_size, s.saliency_offset, s.saliency_size,
               s.recipe_offset, s.recipe_size, j.verdict AS human, j.reasons AS human_reasons, j.p_available, j.rfnet
        FROM samples s LEFT JOIN dash_judged j USING (key)""",
    "dash_prompts": "SELECT DISTINCT batch_id, prompt_id FROM samples",
    "dash_slots": """
        SELECT batch_id, product_id, prompt_id, count(*) AS tries,
               bool_or(accepted AND decision = 'available') AS kept_available,
               bool_or(attempt = 1 AND decision = 'available') AS first_available
        FROM attempts GROUP BY ALL""",
    "dash_attempts": """
        SELECT batch_id, attempt, count(*) AS n, count(*) FILTER (decision = 'available') AS available,
               sum(score) AS score_sum
        FROM attempts GROUP BY ALL""",
    "dash_release_splits": """
        SELECT version, split, count(*) AS n, count(DISTINCT product_id) AS products,
               sum((label = 0)::INT) AS usable, sum((source = 'simulated')::INT) AS simulated
        FROM releases GROUP BY ALL""",
    "dash_release_reasons": "SELECT version, reason, count(*) AS n FROM (SELECT version, unnest(reasons) AS reason "
                            "FROM releases) GROUP BY ALL",
}


def quote(name: str) -> str:
    """A version name as a column name (the releases' folder names are data, not trusted SQL)."""
    return '"' + name.replace('"', '""') + '"'


def release_labels(con) -> str:
    """One row per released sample, one column per version holding its label there (NULL: absent), so
    a diff of two versions is a scan of two columns; joining 600k keys per diff took 300-400 ms."""
    versions = [v for (v,) in con.execute("SELECT DISTINCT version FROM releases ORDER BY 1").fetchall()]
    cols = "".join(f", any_value(label) FILTER (version = '{v.replace(chr(39), chr(39) * 2)}') AS {quote(v)}"
                   for v in versions)
    return f"""SELECT key{cols} FROM (SELECT key, version, label || ':' || list_sort(reasons)::VARCHAR AS label
                                       FROM releases) GROUP BY key"""


def build(con) -> None:
    """Create (or replace) every read-model table in `con`, in dependency order."""
    for name, sql in {**TABLES, "dash_release_labels": release_labels(con)}.items():
        con.execute(f"CREATE OR REPLACE TABLE {name} AS {sql}")
