"""Fed-BioMed 6.x federations: a fedpipe node driven by a stock Fed-BioMed researcher over gRPC."""
