"""Every query the dashboard runs, by page, as SQL over the read model (dashboards.model).

The SQL lives here, apart from Streamlit, so that the pages, the tests and bench/bench_dashboard.py run
exactly the same text: the bench times what the quality lead waits for. Filters are DuckDB
parameters (`$batches`: a list, empty for all; `$source`: human, simulated or all), never string
formatting, so a batch name cannot change a query; release versions, which are column names of the
read model, are quoted identifiers (`model.quote`).

Definitions (the ones the pages show):
  usable rate   share of *decided* consensus samples whose verdict is available (undecided ones are
                ties that the release leaves out by default, so they count neither way)
  agreement     Cohen's kappa per annotator pair on the samples both judged; Krippendorff's nominal
                alpha over every sample with two or more judgements (gold tasks excluded)
  AP            average precision of "available" from p_available against decided consensus, the
                scores floored to 1/1000 (equal scores are one threshold, as in sklearn's AP)
"""

from __future__ import annotations

from dashboards import model
from rf1m import schema

_B = "(len($batches::VARCHAR[]) = 0 OR list_contains($batches::VARCHAR[], batch_id))"
_BS = _B + " AND ($source = 'all' OR source = $source)"

# release labels store indices: reasons into the taxonomy, label into VERDICTS (0 = available)
_REASON_LIST = "[" + ", ".join(f"'{n}'" for n in schema.REASON_NAMES) + "]"

# What the Overview page can group by: a label and the column of the read model behind it.
DIMENSIONS = {"batch": "batch_id", "prompt": "prompt_id", "category": "category",
              "generator model": "base_model", "day generated": "day"}

OVERVIEW = {
    "kpis": f"""
        SELECT (SELECT coalesce(sum(n), 0) FROM dash_samples WHERE {_B}) AS samples,
               coalesce(sum(n), 0) AS labelled,
               coalesce(sum(n) FILTER (status = 'undecided'), 0) AS undecided,
               sum(n) FILTER (status = 'decided' AND verdict = 'available') / sum(n) FILTER (status = 'decided')
                   AS usable_rate,
               (SELECT coalesce(sum(n), 0) FROM dash_annotators WHERE {_BS}) AS judgements,
               (SELECT count(*) FROM quarantine) AS quarantined
        FROM dash_verdicts WHERE {_BS}""",
    **{f"by {d}": f"""
        SELECT {col} AS "group", sum(n) AS labelled,
               sum(n) FILTER (verdict = 'available') / sum(n) AS usable_rate
        FROM dash_verdicts WHERE status = 'decided' AND {_BS} GROUP BY 1 ORDER BY 1""" for d, col in DIMENSIONS.items()},
    **{f"reasons by {d}": f"""
        SELECT {col} AS "group", reason, sum(n) AS samples
        FROM dash_reasons WHERE {_BS} GROUP BY ALL ORDER BY ALL""" for d, col in DIMENSIONS.items()},
    "by release": """
        SELECT version, sum(n) AS samples, sum(usable) / sum(n) AS usable_rate
        FROM dash_release_splits GROUP BY 1 ORDER BY 1""",
    "reasons by release": f"""
        SELECT version, {_REASON_LIST}[reason + 1] AS reason, n AS samples
        FROM dash_release_reasons ORDER BY ALL""",
    "quarantine": "SELECT stage, reason, count(*) AS items FROM quarantine GROUP BY ALL ORDER BY items DESC, stage",
}

ANNOTATORS = {
    "per annotator": f"""
        SELECT annotator, sum(n) AS judgements, count(DISTINCT batch_id) AS batches,
               sum(lead_sum) / sum(lead_n) AS mean_lead_time_s, sum(accepted) / sum(n) AS prelabel_acceptance,
               sum(shared) AS shared_items, sum(agree_ok) / nullif(sum(agree_n), 0) AS agreement_with_consensus,
               sum(gold_n) AS gold_judged, sum(gold_ok) / nullif(sum(gold_n), 0) AS gold_accuracy
        FROM dash_annotators WHERE {_BS} GROUP BY 1 ORDER BY 1""",
    "throughput": f"""
        SELECT day, annotator, sum(n) AS judgements FROM dash_throughput WHERE {_BS} GROUP BY ALL ORDER BY ALL""",
    "kappa": f"""
        SELECT a AS annotator_a, b AS annotator_b, sum(n) AS shared_items, sum(agree) / sum(n) AS observed,
               (sum(va) / sum(n)) * (sum(vb) / sum(n)) + (1 - sum(va) / sum(n)) * (1 - sum(vb) / sum(n)) AS expected,
               CASE WHEN expected < 1 THEN (observed - expected) / (1 - expected) END AS kappa
        FROM dash_pairs WHERE {_BS} GROUP BY a, b HAVING sum(n) >= 2 ORDER BY a, b""",
    "alpha": f"""
        SELECT coalesce(batch_id, 'all batches') AS batch, sum(units) AS shared_items, sum(m) AS judgements,
               sum(dis) / sum(m) AS disagreement,
               (sum(m) ^ 2 - sum(a) ^ 2 - (sum(m) - sum(a)) ^ 2) / (sum(m) * (sum(m) - 1)) AS expected,
               CASE WHEN expected > 0 THEN 1 - disagreement / expected END AS alpha
        FROM dash_units WHERE {_BS} GROUP BY ROLLUP (batch_id) ORDER BY batch_id NULLS FIRST""",
}

_SCORES = f"SELECT * FROM dash_scores WHERE {_BS}"

RFNET = {
    "summary": f"""
        SELECT sum(n) AS samples, sum(n * y) AS available,
               sum(n) FILTER (rfnet = 'available' AND y = 1) AS tp, sum(n) FILTER (rfnet = 'available' AND y = 0) AS fp,
               sum(n) FILTER (rfnet <> 'available' AND y = 1) AS fn,
               (SELECT string_agg(DISTINCT model_version || ' at ' || round(threshold, 4), ', ')
                FROM dash_models WHERE {_B}) AS models,
               (SELECT max(threshold) FROM dash_models WHERE {_B}) AS threshold
        FROM ({_SCORES})""",
    "confusion": f"""SELECT CASE y WHEN 1 THEN 'available' ELSE 'not_available' END AS human, rfnet,
                            sum(n) AS samples FROM ({_SCORES}) GROUP BY ALL ORDER BY ALL""",
    # every score bin is a threshold, highest first; AP = sum of precision x recall gained
    "pr curve": f"""
        WITH g AS (SELECT bin, sum(n * y) AS tp, sum(n * (1 - y)) AS fp FROM ({_SCORES}) GROUP BY 1),
             c AS (SELECT bin, sum(tp) OVER w AS ctp, sum(fp) OVER w AS cfp FROM g WINDOW w AS (ORDER BY bin DESC)),
             pr AS (SELECT bin, ctp / (ctp + cfp) AS precision, ctp / max(ctp) OVER () AS recall FROM c),
             step AS (SELECT *, (recall - coalesce(lag(recall) OVER (ORDER BY bin DESC), 0)) * precision AS area
                      FROM pr)
        SELECT bin / {model.SCORE_BINS} AS threshold, precision, recall, sum(area) OVER () AS ap
        FROM step ORDER BY bin DESC""",
    "calibration": f"""
        SELECT bin * 10 // {model.SCORE_BINS} / 10 AS bin, sum(n) AS samples, sum(p_sum) / sum(n) AS predicted,
               sum(n * y) / sum(n) AS observed
        FROM ({_SCORES}) GROUP BY 1 ORDER BY 1""",
    "at threshold": f"""
        SELECT sum(n) FILTER (bin >= round($threshold * {model.SCORE_BINS}) AND y = 1) AS tp,
               sum(n) FILTER (bin >= round($threshold * {model.SCORE_BINS}) AND y = 0) AS fp,
               sum(n) FILTER (bin < round($threshold * {model.SCORE_BINS}) AND y = 1) AS fn
        FROM ({_SCORES})""",
    "disagreements": f"""
        SELECT key, batch_id, round(p_available, 4) AS p_available, rfnet, rfnet_reasons, human, human_reasons
        FROM dash_disagreements WHERE {_BS} ORDER BY miss DESC, key LIMIT 500""",
}

_TILES = f"""
    SELECT * FROM dash_gallery
    WHERE {_B} AND ($verdict = 'any' OR human = $verdict)
      AND ($reason = 'any' OR list_contains(human_reasons, $reason))
      AND ($prompt = 'any' OR prompt_id = $prompt)
      AND (NOT $disagree OR rfnet <> human)"""

GALLERY = {
    "prompts": f"SELECT DISTINCT prompt_id FROM dash_prompts WHERE {_B} ORDER BY 1",
    "count": f"SELECT count(*) AS samples FROM ({_TILES})",
    "tiles": f"SELECT * FROM ({_TILES}) ORDER BY key LIMIT 12 OFFSET $offset",
}

GENERATION = {
    "kpis": f"""
        SELECT count(*) AS slots, sum(tries) AS attempts, avg(first_available::INT) AS available_first_try,
               avg(kept_available::INT) AS available_after_cyclic, avg(tries) AS mean_tries
        FROM dash_slots WHERE {_B}""",
    "by attempt": f"""
        SELECT attempt, sum(n) AS tries, sum(available) / sum(n) AS available_rate, sum(score_sum) / sum(n) AS mean_score
        FROM dash_attempts WHERE {_B} GROUP BY 1 ORDER BY 1""",
    "tries": f"SELECT tries, kept_available, count(*) AS slots FROM dash_slots WHERE {_B} GROUP BY ALL ORDER BY ALL",
    "by batch": f"""
        SELECT batch_id, count(*) AS slots, sum(tries) AS attempts, avg(first_available::INT) AS available_first_try,
               avg(kept_available::INT) AS available_after_cyclic
        FROM dash_slots WHERE {_B} GROUP BY 1 ORDER BY 1""",
}

RELEASES = {
    "versions": """
        SELECT version, split, n AS samples, products, usable / n AS usable_rate, simulated / n AS simulated_share
        FROM dash_release_splits ORDER BY version, array_position(['train', 'validation', 'test'], split)""",
}


def release_diff(old: str, new: str) -> str:
    """Samples added, removed, relabelled and unchanged from release `old` to `new` (quoted column names)."""
    o, n = model.quote(old), model.quote(new)
    return f"""
        SELECT count(*) FILTER ({o} IS NULL AND {n} IS NOT NULL) AS added,
               count(*) FILTER ({o} IS NOT NULL AND {n} IS NULL) AS removed,
               count(*) FILTER ({o} <> {n}) AS relabelled, count(*) FILTER ({o} = {n}) AS unchanged
        FROM dash_release_labels"""


PAGES = {"Overview": OVERVIEW, "Annotators": ANNOTATORS, "RFNet vs people": RFNET, "Gallery": GALLERY,
         "Generation": GENERATION, "Releases": RELEASES}


def params_of(sql: str, values: dict) -> dict:
    """The parameters `sql` names, from `values` (DuckDB refuses named parameters a query does not use)."""
    return {k: v for k, v in values.items() if f"${k}" in sql}


def run(con, sql: str, **values):
    """`sql` on a DuckDB connection (a fresh cursor: Streamlit serves sessions from several threads)."""
    return con.cursor().execute(sql, params_of(sql, values)).df()
