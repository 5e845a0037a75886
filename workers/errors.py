"""The two kinds of failure the workers' code raises, for the tasks' retry policy to tell apart."""


class PermanentError(Exception):
    """Retrying cannot help (the model does not exist, it can never fit): fail the items at once.

    The message is the failure reason the report shows, so it must say what to fix.
    """


class TransientError(Exception):
    """Retrying may help (a resource was busy for a moment): the task is retried with back-off."""
