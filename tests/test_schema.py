"""The derived names of the catalog: every writer and reader gets them from ngram_dask.schema."""

from __future__ import annotations

import json

from ngram_dask import schema


def test_scan_tables_round_trip():
    assert schema.scan_table(4) == "scan_4" and schema.scan_length("scan_4") == 4
    assert schema.scan_length(schema.scan_table(12)) == 12
    for other in ("scan_", "scan_x", "scan_4_old", "top_trigrams", "xscan_4"):
        assert schema.scan_length(other) is None and not schema.is_scan_table(other)


def test_score_columns():
    assert schema.score_column("EleutherAI/pythia-1.4b-deduped") == "p_pythia_1_4b_deduped"
    assert schema.score_column("./runs/My-Model/") == "p_my_model"
    assert schema.is_score_column("p_pythia_70m") and not schema.is_score_column("p_")
    assert not schema.is_score_column("sum_count")
    assert schema.score_column_model("p_pythia_70m") == "pythia_70m"
    assert schema.score_column_model("frac_max") == "frac_max"


def test_scored_models_record_round_trips_and_tolerates_damage():
    scored = {"p_a": {"model": "a", "tables": {"top_bigrams": 3}}}
    info = schema.scored_models_info(scored)
    assert list(info) == [schema.SCORED_MODELS] == ["scored_models"]
    assert schema.scored_models(info) == scored
    assert schema.scored_models({}) == {}
    assert schema.scored_models({"scored_models": "{not json"}) == {}
    assert schema.scored_models({"scored_models": "[1, 2]"}) == {}
    mixed = {"scored_models": json.dumps({"p_a": {"model": "a"}, "p_b": 3})}
    assert schema.scored_models(mixed) == {"p_a": {"model": "a"}}
