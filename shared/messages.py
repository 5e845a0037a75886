"""Task names and stages shared by the producer (which sends) and the workers (which run them).

Messages carry references only (run id, item keys): never image bytes.
"""

RELATIONS_TASK = "evalfleet.relations.generate"
EDIT_TASK = "evalfleet.editbench.edit"
SCORE_TASK = "evalfleet.editbench.score"

RELATIONS_STAGE = "relations"
EDIT_STAGE = "edit"
SCORE_STAGE = "score"

# The stage whose items a task's keys name.
STAGE_OF_TASK = {RELATIONS_TASK: RELATIONS_STAGE, EDIT_TASK: EDIT_STAGE, SCORE_TASK: SCORE_STAGE}
