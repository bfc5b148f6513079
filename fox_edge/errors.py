"""The one exception fox-edge raises for bad input: its message is a single line naming the problem and the fix."""


class FoxEdgeError(Exception):
    pass
