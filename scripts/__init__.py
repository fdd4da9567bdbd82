"""Helper scripts of the Makefile (a package so the tests can import scripts.audit)."""
