"""The vector generators here import the real Fed-BioMed package: pytest must not import them."""

collect_ignore = ["make_message_vectors.py", "make_overlay_vectors.py"]
