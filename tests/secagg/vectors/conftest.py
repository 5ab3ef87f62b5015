"""The vector maker runs under the Fed-BioMed scratch environment only: pytest never imports it."""

collect_ignore = ["make_lom_vectors.py", "make_jl_vectors.py"]
