"""Stand-ins for `IPython.display` where IPython is not installed (a headless run, headless.py):
what a notebook would show is printed instead."""
from __future__ import annotations


class Markdown:
    """What `IPython.display.Markdown` shows, for a machine without IPython: printed as its text."""

    def __init__(self, data=None):
        self.data = data

    def __repr__(self):
        return str(self.data)


class Image:
    """What `IPython.display.Image` shows, for a machine without IPython: printed as its file name."""

    def __init__(self, data=None, filename=None, **_):
        self.filename = filename

    def __repr__(self):
        return f"[image {self.filename}]"


def display(*objs, **_):
    for o in objs:
        print(o)
