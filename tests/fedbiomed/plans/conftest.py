"""The plans here import the real Fed-BioMed package: pytest must not import them while collecting.

``support.py`` (helpers of the compat tests) is imported by the tests themselves.
"""

collect_ignore_glob = ["*.py"]
