"""The one exception type that reaches users: a message naming the problem and its fix."""


class DblurDoseError(Exception):
    """A problem with the user's input or environment; the message says how to fix it."""
