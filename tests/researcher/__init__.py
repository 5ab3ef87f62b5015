"""Tests of the researcher side: configuration, outputs, the connection to a server, `fedpipe run`."""
