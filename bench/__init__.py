"""Performance benchmarks of xfrmid (issue 6): ``make bench`` runs them in the test VM."""
