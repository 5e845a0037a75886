"""Task names shared by the producer (which sends) and the workers (which run them).

Messages carry references only (run id, image id, item keys): never image bytes.
"""

RELATIONS_TASK = "evalfleet.relations.generate"

RELATIONS_STAGE = "relations"
