"""The vector generator here imports the real Fed-BioMed package: pytest must not import it."""

collect_ignore = ["make_message_vectors.py"]
