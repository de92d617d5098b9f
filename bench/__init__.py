"""Performance benchmarks of xfrmid: ``make bench`` runs them in the test VM."""
