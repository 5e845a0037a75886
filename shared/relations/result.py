"""One relations result record, as the workers store it and stage2_generated_results.json lists it.

The workers copy a pair's fields from its prepared item and add the descriptions; the report
keeps the record's output fields in this order (and drops the bookkeeping: worker, seconds).
"""

from __future__ import annotations

from typing import Any

# The fields of a result in stage2_generated_results.json, in order.
RESULT_FIELDS = ("image_id", "subject", "object", "stage1_top_k", "stage2_generated",
                 "has_gt", "gt_predicates")
# The ones that come from the prepared pair as they are (the rest are generated).
PAIR_FIELDS = tuple(f for f in RESULT_FIELDS if f != "stage2_generated")


def relation_result(pair: dict[str, Any], descriptions: list[dict[str, Any]]) -> dict[str, Any]:
    """The stored result of ``pair``: its fields and its generated descriptions."""
    result = {field: pair[field] for field in PAIR_FIELDS}
    result["stage2_generated"] = descriptions
    return result


def report_record(result: dict[str, Any]) -> dict[str, Any]:
    """The record the report lists for a stored result."""
    return {field: result[field] for field in RESULT_FIELDS}
