"""Tests of the ``fedpipe`` command as its users see it: errors, help, the node owner's workflow."""
