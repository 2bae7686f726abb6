"""Metrics users compare with papers; ``vitp-geo evaluate`` reads predictions written by anyone."""
